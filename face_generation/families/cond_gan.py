"""Identity-conditioned GAN family (networks in models/cond_gan.py): a UNet generator from a
low-dimensional code and an embedding, a projection discriminator, and four losses, each
weighted in configs/model/cond_gan.yaml and logged on its own:

    adversarial   non-saturating BCE (Goodfellow et al. 2014), the discriminator's and the
                  generator's halves
    identity      1 − cosine between a frozen, differentiable face encoder's embedding of the
                  generated face and of the real face whose condition row it was given (the
                  project's fine-tuned encoder, or FaceNet: `model.identity_network`); dlib,
                  evaluation's judge, is never trained against
    perceptual    against that real face: LPIPS when its weights can be had, otherwise a
                  channel-normalised multi-layer EfficientNet-Lite0 feature distance
                  (`effnet_feature_distance`, never called LPIPS)
    r1            lazy R1 (Mescheder et al. 2018): γ/2·E‖∇_x D(x, e)‖² on real images every
                  `r1_every` steps, scaled by r1_every (StyleGAN2's lazy regularisation)

Read top to bottom: the losses → the frozen loss networks → the family.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from face_generation.families.conditioning import ConditionalFamily
from face_generation.families.latents import gaussian_latents
from face_generation.families.optimization import adam, optimizer_step, place
from face_generation.models.cond_gan import ProjectionDiscriminator, UNetGenerator
from face_generation.networks.effnet import EfficientNetLite0, load_effnet
from face_generation.networks.network import FrozenNetwork
from face_generation.runtime.family import Batch, StepContext
from face_generation.runtime.pixels import resize

# --- the losses -----------------------------------------------------------------------------


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(x, e) - log(1 - D(G(z, e), e)), in the stable softplus form, in float32."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss -log D(G(z, e), e)."""
    return F.softplus(-fake_logits.float()).mean()


def r1_penalty(
    discriminator: nn.Module, real: torch.Tensor, cond: torch.Tensor | None
) -> torch.Tensor:
    """E‖∇_x D(x, e)‖² over real images: the squared gradient norm per image, averaged."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(real, cond)
    (gradient,) = torch.autograd.grad(logits.float().sum(), real, create_graph=True)
    return gradient.float().square().sum(dim=(1, 2, 3)).mean()


def identity_loss(generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """1 − cosine between row-aligned embeddings (the reference's carries no gradient)."""
    return (1 - F.cosine_similarity(generated.float(), reference.float().detach(), dim=1)).mean()


def normalized_levels(levels: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Each feature map unit-length over its channels at every position (as LPIPS does)."""
    return [level.float() / (level.float().norm(dim=1, keepdim=True) + 1e-10) for level in levels]


def effnet_feature_distance(
    first: tuple[torch.Tensor, ...], second: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """Per image: the mean over levels and positions of the squared distance between
    channel-normalised feature maps (LPIPS's form with uniform channel weights; 0 to 4)."""
    pairs = zip(normalized_levels(first), normalized_levels(second), strict=True)
    per_level = [(a - b).square().sum(dim=1).mean(dim=(1, 2)) for a, b in pairs]
    return torch.stack(per_level).mean(dim=0)


# --- the frozen loss networks ----------------------------------------------------------------


def effnet_pyramid(
    network: EfficientNetLite0, inputs: torch.Tensor, levels: int
) -> tuple[torch.Tensor, ...]:
    """The first `levels` maps of EfficientNetLite0.forward's pyramid (finest first), without
    running the blocks after the last of them: the perceptual term's cost falls with depth."""
    trunk = network.network
    x, maps = trunk.bn1(trunk.conv_stem(inputs)), []
    for index, block in enumerate(trunk.blocks):
        x = block(x)
        if index in network.pyramid_blocks:
            maps.append(x)
            if len(maps) == levels:
                break
    return tuple(maps)


class PerceptualDistance(FrozenNetwork):
    """Images in [-1, 1] → per-image perceptual distance to a reference, differentiable in the
    first argument: LPIPS (`network: lpips`) or the EfficientNet-Lite0 feature distance."""

    def __init__(self, settings: DictConfig, timeout_s: float) -> None:
        super().__init__()
        self.kind = str(settings.network)
        if self.kind == "lpips":
            from face_generation.networks.lpips import load_lpips

            self.network: nn.Module = load_lpips(settings.lpips, timeout_s)
        elif self.kind == "effnet_lite0":
            self.network = load_effnet(settings, option="model.perceptual", switch="lpips")
            self.depth = int(settings.levels)
        else:
            raise ValueError(
                f"model.perceptual.network={self.kind!r}: expected effnet_lite0 or lpips"
            )
        self.name = "lpips" if self.kind == "lpips" else "effnet_feature_distance"
        self.requires_grad_(False)  # frozen: gradients pass through it to the images only

    def levels(self, images: torch.Tensor) -> Any:
        network: Any = self.network
        inputs = network.preprocess(images, (-1.0, 1.0))
        if self.kind == "lpips":
            return network.forward(inputs)
        return effnet_pyramid(network, inputs, self.depth)

    def forward(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """N distances."""
        with torch.no_grad():
            target = self.levels(references)
        if self.kind == "lpips":
            return self.network.distance(self.levels(images), target).flatten()  # type: ignore[operator]
        return effnet_feature_distance(self.levels(images), target)


class IdentityEmbedding(FrozenNetwork):
    """Images in [-1, 1] → unit identity embeddings through a differentiable face encoder: the
    fine-tuned encoder (encoder=effnet_contrastive's settings) or FaceNet."""

    def __init__(self, settings: DictConfig) -> None:
        super().__init__()
        from face_generation.features.conditions import identity_network

        if str(settings.name) == "dlib":
            raise ValueError(
                "model.identity_network=dlib: dlib is not differentiable, and it is "
                "evaluation's judge; choose effnet_contrastive or facenet"
            )
        self.network: Any = identity_network(settings)
        self.name = str(settings.name)
        self.requires_grad_(False)  # frozen: gradients pass through it to the images only

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        network = self.network
        if self.name != "facenet":  # resizes on the device: differentiable
            inputs = network.preprocess(images, (-1.0, 1.0))
            return F.normalize(network.forward(inputs).embedding.float(), dim=1)
        # FaceNet's own preprocessing crops each face on the CPU; here the whole face, resized
        # and standardised as facenet-pytorch does ((x·255 − 127.5)/128 from [-1, 1] pixels)
        inputs = resize(images.float(), int(network.image_size), antialias=True) * (127.5 / 128)
        return F.normalize(network.network(inputs).float(), dim=1)


def loss_networks(
    model_cfg: DictConfig, weights: dict[str, float], context: StepContext
) -> dict[str, nn.Module]:
    """The frozen networks of the identity and perceptual terms that have a weight."""
    networks: dict[str, nn.Module] = {}
    if weights["identity"] > 0:
        networks["identity"] = place(IdentityEmbedding(model_cfg.identity_network), context)
    if weights["perceptual"] > 0:
        timeout_s = float(model_cfg.network_timeout_s)
        networks["perceptual"] = place(PerceptualDistance(model_cfg.perceptual, timeout_s), context)
    return networks


def likeness_losses(
    networks: dict[str, nn.Module], images: torch.Tensor, references: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The identity and perceptual terms (those `loss_networks` built) of generated images
    against the real faces they should resemble; gradients reach `images` only."""
    losses = {}
    if "identity" in networks:
        with torch.no_grad():
            target = networks["identity"](references)
        losses["identity"] = identity_loss(networks["identity"](images), target)
    if "perceptual" in networks:
        losses["perceptual"] = networks["perceptual"](images, references).mean()
    return losses


# --- the family ------------------------------------------------------------------------------

# the generator's terms and the `model.loss_weights` entry that weights each
TERM_WEIGHTS = {"g_adversarial": "adversarial", "identity": "identity", "perceptual": "perceptual"}


class CondGANFamily(ConditionalFamily):
    """A UNet GAN conditioned on the rows of `model.condition` (families/conditioning.py)."""

    name: ClassVar[str] = "cond_gan"
    generator_key: ClassVar[str] = "generator"
    # the identity loss reads the fine-tuned encoder's checkpoint (model=encoder)
    trained_after: ClassVar[tuple[str, ...]] = ("encoder",)

    def __init__(self, model_cfg: DictConfig, resolution: int, context: StepContext) -> None:
        super().__init__(model_cfg, resolution, context)
        if self.condition_array is None:
            raise ValueError("model.condition=null: the cond_gan family needs a condition")
        self.generator = place(self.build_generator(model_cfg, resolution), context)
        self.discriminator = place(
            ProjectionDiscriminator(
                resolution=resolution,
                base_channels=int(model_cfg.discriminator_channels),
                max_channels=int(model_cfg.max_channels),
                cond_dim=int(model_cfg.cond_dim),
                leaky_slope=float(model_cfg.leaky_slope),
                spectral_norm=bool(model_cfg.spectral_norm),
            ),
            context,
        )
        self.networks = {"generator": self.generator, "discriminator": self.discriminator}
        self.optimizers = {
            name: adam(network.parameters(), model_cfg.optimizer, context.device)
            for name, network in self.networks.items()
        }
        self.weights = {key: float(value) for key, value in model_cfg.loss_weights.items()}
        self.r1_every = int(model_cfg.r1_every)
        self.frozen = loss_networks(model_cfg, self.weights, context)

    def generator_losses(
        self, fake: torch.Tensor, real: torch.Tensor, cond: torch.Tensor, null: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The generator's weighted terms, by name (the identity and perceptual terms compare
        each generated face with the real face its condition row came from)."""
        adversarial = generator_loss(self.discriminator(fake, cond, null))
        return {"g_adversarial": adversarial, **likeness_losses(self.frozen, fake, real)}

    def train_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        cond, null = self.condition_rows(batch, self.generator.cond_dim)
        assert cond is not None and null is not None
        real, n = batch.images, len(batch.images)
        code = torch.randn(n, self.generator.code_dim, device=real.device)
        noise = [torch.randn(shape, device=real.device) for shape in self.generator.noise_shapes(n)]
        clip = self.context.grad_clip

        with self.context.autocast():
            fake = self.generator(code, cond, null, noise)
            real_logits = self.discriminator(real, cond, null)
            fake_logits = self.discriminator(fake.detach(), cond, null)
        d_adversarial = discriminator_loss(real_logits, fake_logits)
        d_loss = self.weights["adversarial"] * d_adversarial
        metrics = {"d_adversarial": d_adversarial.detach()}
        if self.weights["r1"] > 0 and step % self.r1_every == 0:  # lazy: every k steps, ×k
            r1 = r1_penalty(self.discriminator, real, cond)
            d_loss = d_loss + self.weights["r1"] / 2 * self.r1_every * r1
            metrics["r1"] = r1.detach()
        d_norm = optimizer_step(self.optimizers["discriminator"], d_loss, self.discriminator, clip)

        self.discriminator.requires_grad_(False)  # the generator step must not train D
        with self.context.autocast():
            terms = self.generator_losses(fake, real, cond, null)
        g_loss = sum(self.weights[TERM_WEIGHTS[name]] * value for name, value in terms.items())
        assert isinstance(g_loss, torch.Tensor)
        g_norm = optimizer_step(self.optimizers["generator"], g_loss, self.generator, clip)
        self.discriminator.requires_grad_(True)
        return {
            **metrics,
            **{name: value.detach() for name, value in terms.items()},
            "d_loss": d_loss.detach(),
            "g_loss": g_loss.detach(),
            "d_grad_norm": d_norm.detach(),
            "g_grad_norm": g_norm.detach(),
        }

    @classmethod
    def build_generator(cls, model_cfg: DictConfig, resolution: int) -> UNetGenerator:
        side = model_cfg.attention_side
        return UNetGenerator(
            resolution=resolution,
            code_dim=int(model_cfg.code_dim),
            code_side=int(model_cfg.code_side),
            cond_dim=int(model_cfg.cond_dim),
            style_dim=int(model_cfg.style_dim),
            base_channels=int(model_cfg.generator_channels),
            max_channels=int(model_cfg.max_channels),
            attention_side=None if side is None else int(side),
            head_channels=int(model_cfg.head_channels),
            groups=int(model_cfg.groups),
            leaky_slope=float(model_cfg.leaky_slope),
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
        """n images for the condition rows `cond` (the learned null embedding without one), the
        code drawn from N(0, temperature²·I) (temperature < 1: the truncation trick) and the
        injected noise from N(0, I), all from `generator`."""
        assert isinstance(network, UNetGenerator)
        device = next(network.parameters()).device
        rows = cls.sampling_condition(cond, n, network.cond_dim, device)
        code = gaussian_latents(n, network.code_dim, device, generator, temperature)
        noise = [
            gaussian_latents(n, shape[2] * shape[3], device, generator).view(shape)
            for shape in network.noise_shapes(n)
        ]
        return network(code, rows, None, noise)


FAMILY = CondGANFamily
