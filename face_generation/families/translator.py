"""Imitator and Translator family (networks in models/translator.py): photo → parameters → face.

The Imitator is the identity-conditioned GAN's generator (families/cond_gan.py), loaded frozen
from its checkpoint (`model.imitator_checkpoint`); its input, an embedding and a low-dimensional
code, is the face parameter vector. The Translator is a trainable head on a frozen backbone's
features (`model.inputs.features`: the rows the features stage wrote, computed from photos the
same way at inference; when they are the Imitator's own condition rows, the embedding is those
rows plus a learned correction), trained so that Imitator(Translator(x)) reproduces x:

    pixel        mean absolute difference
    perceptual   as cond_gan's (EfficientNet-Lite0 feature distance, or LPIPS)
    identity     as cond_gan's (1 − cosine in the frozen, differentiable face encoder's space)
    parameters   the parameters' negative log-prior: the embedding standardised by the
                 Imitator's random-embedding prior and the code, both pulled towards the
                 region of parameter space the Imitator was trained on

each weighted in configs/model/translator.yaml and logged on its own. The trained network
(`translator`) holds the head, the Imitator's weights and its prior, so its checkpoint alone
reconstructs (RECONSTRUCT: evaluation's SSIM, PSNR and dlib identity) and samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from face_generation.families.cond_gan import CondGANFamily, likeness_losses, loss_networks
from face_generation.families.conditioning import ConditionalFamily
from face_generation.families.latents import gaussian_latents
from face_generation.families.optimization import adam, optimizer_step, place
from face_generation.features.conditions import computes_from_photos, embed_faces
from face_generation.models.cond_gan import UNetGenerator
from face_generation.models.translator import RoundTrip, TranslatorHead
from face_generation.runtime.checkpoint import CheckpointError, load_checkpoint, load_weights
from face_generation.runtime.conditioning import array_name, declared_condition
from face_generation.runtime.family import RECONSTRUCT, SAMPLE, Batch, StepContext
from face_generation.runtime.pixels import to_uint8_nhwc


def parameter_prior_loss(
    embedding: torch.Tensor, code: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """Mean squared standardised embedding plus mean squared code: their negative log-density
    under the Imitator's priors (a diagonal Gaussian fitted on its conditions, and N(0, I)),
    up to constants and per dimension."""
    standardised = (embedding.float() - mean) / std.clamp(min=1e-6)
    return standardised.square().mean() + code.float().square().mean()


def imitator_advice(path: Path, reason: str) -> str:
    return (
        f"the Imitator cannot be loaded from {path}: {reason}. Train the identity-conditioned "
        "GAN first (`dvc repro train@cond_gan`, or `python -m face_generation.train "
        "model=cond_gan`), or set model.imitator_checkpoint"
    )


def load_imitator(path: Path, resolution: int) -> tuple[UNetGenerator, dict[str, Any]]:
    """The cond_gan checkpoint's EMA generator and what rebuilds it without the file: its
    model config, random-condition prior and the array that conditioned it."""
    try:
        state = load_checkpoint(path, expected_model="cond_gan")
    except CheckpointError as error:
        raise CheckpointError(imitator_advice(path, str(error))) from error
    cfg = OmegaConf.create(state["config"])
    assert isinstance(cfg, DictConfig)
    if int(cfg.data.resolution) != resolution:
        raise CheckpointError(
            imitator_advice(path, f"it was trained at {cfg.data.resolution} px, not {resolution}")
        )
    imitator = CondGANFamily.build_generator(cfg.model, resolution)
    weights = state["ema"] if state["ema"] is not None else state["networks"][state["generator"]]
    load_weights(imitator, weights, path, "generator")
    prior = (state.get("family_state") or {}).get("condition_prior")
    if prior is None:
        raise CheckpointError(imitator_advice(path, "it keeps no random conditions"))
    spec = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "prior": prior,
        "condition": declared_condition(cfg.model),
    }
    return imitator, spec


class TranslatorFamily(ConditionalFamily):
    """Unconditional: reads `model.inputs.features` (families/conditioning.py declares it)."""

    name: ClassVar[str] = "translator"
    generator_key: ClassVar[str] = "translator"
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE, RECONSTRUCT})
    trained_after: ClassVar[tuple[str, ...]] = ("cond_gan", "encoder")

    def __init__(self, model_cfg: DictConfig, resolution: int, context: StepContext) -> None:
        super().__init__(model_cfg, resolution, context)
        if self.condition_array is not None:
            raise ValueError("model.condition: the translator is unconditional; set it to null")
        self.features = array_name(model_cfg.inputs.features, "model.inputs.features")
        imitator, self.imitator_spec = load_imitator(
            Path(str(model_cfg.imitator_checkpoint)), resolution
        )
        self.round_trip = place(
            self.round_trip_of(model_cfg, imitator, self.imitator_spec), context
        )
        self.networks = {"translator": self.round_trip}
        self.optimizers = {
            "translator": adam(
                self.round_trip.head.parameters(), model_cfg.optimizer, context.device
            )
        }
        self.weights = {key: float(value) for key, value in model_cfg.loss_weights.items()}
        self.frozen = loss_networks(model_cfg, self.weights, context)

    def train_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        real = batch.images
        with self.context.autocast():
            embedding, code = self.round_trip.head(batch.features[self.features].float())
            output = self.round_trip.imitator(code, embedding)
            terms = {
                "pixel": F.l1_loss(output.float(), real.float()),
                **likeness_losses(self.frozen, output, real),
                "parameters": parameter_prior_loss(
                    embedding, code, self.round_trip.prior_mean, self.round_trip.prior_std
                ),
            }
        loss = sum(self.weights[name] * value for name, value in terms.items())
        assert isinstance(loss, torch.Tensor)
        norm = optimizer_step(
            self.optimizers["translator"], loss, self.round_trip.head, self.context.grad_clip
        )
        return {
            **{name: value.detach() for name, value in terms.items()},
            "loss": loss.detach(),
            "grad_norm": norm.detach(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "imitator": self.imitator_spec}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict({key: value for key, value in state.items() if key != "imitator"})

    @classmethod
    def build_generator(cls, model_cfg: DictConfig, resolution: int) -> RoundTrip:
        """The Imitator from `model.imitator_checkpoint` and a new head."""
        imitator, spec = load_imitator(Path(str(model_cfg.imitator_checkpoint)), resolution)
        return cls.round_trip_of(model_cfg, imitator, spec)

    @classmethod
    def rebuild_generator(
        cls, model_cfg: DictConfig, resolution: int, family_state: dict[str, Any]
    ) -> RoundTrip:
        """From the translator's checkpoint alone: the Imitator's architecture, prior and
        condition are in its state (its weights in the network's), so the cond_gan file is
        not needed (a registered model loads on another machine)."""
        spec = family_state.get("imitator")
        if spec is None:  # a checkpoint from before the state kept it
            return cls.build_generator(model_cfg, resolution)
        imitator_cfg = OmegaConf.create(spec["model"])
        assert isinstance(imitator_cfg, DictConfig)
        imitator = CondGANFamily.build_generator(imitator_cfg, resolution)
        return cls.round_trip_of(model_cfg, imitator, spec)

    @classmethod
    def round_trip_of(
        cls, model_cfg: DictConfig, imitator: UNetGenerator, spec: dict[str, Any]
    ) -> RoundTrip:
        """A new head before `imitator`; the head's input settings ride along (plain
        attributes) to compute features from photos."""
        features = array_name(model_cfg.inputs.features, "model.inputs.features")
        head = TranslatorHead(
            int(model_cfg.features_dim),
            int(model_cfg.hidden_dim),
            imitator.cond_dim,
            imitator.code_dim,
            float(model_cfg.leaky_slope),
            passthrough=features == spec["condition"],  # it reads the Imitator's own rows
        )
        prior = spec["prior"]
        mean, std = torch.tensor(prior["mean"]), torch.tensor(prior["std"])
        round_trip = RoundTrip(head, imitator, mean, std)
        round_trip.features_network = model_cfg.inputs.features.network
        round_trip.features_array = str(model_cfg.inputs.features.array)
        return round_trip

    @classmethod
    @torch.no_grad()
    def reconstruct(cls, network: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Imitator(Translator(x)) of N×3×H×W images in [-1, 1], the head's features computed
        from the images by the network that wrote the training rows."""
        assert isinstance(network, RoundTrip)
        return network(cls.photo_features(network, images))

    @classmethod
    @torch.no_grad()
    def variants(
        cls, network: nn.Module, images: torch.Tensor, n: int, generator: torch.Generator
    ) -> torch.Tensor:
        """n faces per image (N·n, in image order): its translated embedding kept, the code
        redrawn from N(0, I) (same person, another pose or light, as far as the Imitator
        separates them)."""
        assert isinstance(network, RoundTrip)
        embedding, _ = network.head(cls.photo_features(network, images))
        embedding = embedding.repeat_interleave(n, dim=0)
        code = gaussian_latents(len(embedding), network.head.code_dim, images.device, generator)
        return network.imitator(code, embedding)

    @classmethod
    def photo_features(cls, network: RoundTrip, images: torch.Tensor) -> torch.Tensor:
        """The head's input for N×3×H×W images in [-1, 1], by the network that wrote its rows."""
        settings, array = network.features_network, network.features_array
        if not computes_from_photos(settings, array):
            raise ValueError(
                f"the translator reads {settings.name}/{array}, which cannot be computed from "
                "photos: train it on a backbone's embedding"
            )
        faces = to_uint8_nhwc(images, (-1.0, 1.0))
        return torch.from_numpy(embed_faces(settings, array, faces)).to(images.device)

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
        """The Imitator from random parameters: an embedding from its prior and the code (and
        noise) as cond_gan samples them, all from `generator`."""
        if cond is not None:
            raise ValueError("the translator is unconditional: sample without a condition")
        assert isinstance(network, RoundTrip)
        device = network.prior_mean.device
        standard = gaussian_latents(n, len(network.prior_mean), device, generator)
        embedding = network.prior_mean + network.prior_std * standard
        return CondGANFamily.sample(
            network.imitator, n, cond=embedding, generator=generator, temperature=temperature
        )


FAMILY = TranslatorFamily
