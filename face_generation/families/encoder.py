"""Face encoder family (networks in models/encoder.py): a projection head, and optionally a
copy of the backbone's last stage, on frozen EfficientNet-Lite0, trained with a supervised
contrastive loss on pairs of faces of one person. It embeds faces; it does not generate them.

Each row brings its partner (`labels/partner`, features/labels.py): another face of the same
person, or the face itself when none is known. Both are augmented (a random crop, brightness,
contrast) and embedded. SupCon (Khosla et al. 2020) pulls each embedding towards those of the
same person in the batch, its partner's above all, and pushes it from the rest. A face of an
unknown person is a person of its own, so its one positive is another view of itself: SimCLR
(Chen et al. 2020), what the embedded default (no identities) trains with.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from face_generation.families.optimization import adam, optimizer_step, place
from face_generation.models.encoder import FaceEncoderHead, ProjectionHead
from face_generation.networks.contrastive import head_input
from face_generation.networks.effnet import NUM_FEATURES, last_stage_architecture, load_effnet
from face_generation.runtime.family import EMBED, IMAGES, Batch, Family, RowInput, StepContext

IDENTITY = "labels/identity"
PARTNER = "labels/partner"


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon's L_out: for each anchor, the mean over its positives (same label, not itself) of
    -log softmax of cosine similarity / temperature over every other embedding."""
    itself = torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
    similarity = (embeddings @ embeddings.T / temperature).masked_fill(itself, float("-inf"))
    log_probability = similarity - similarity.logsumexp(dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~itself
    per_anchor = log_probability.masked_fill(~positives, 0).sum(dim=1) / positives.sum(dim=1)
    return -per_anchor.mean()


def augment(images: torch.Tensor, settings: DictConfig) -> torch.Tensor:
    """Per image: a random square crop (side `scale`, centre moved by up to `shift`) resampled
    to the same size, then a random brightness and contrast change. Batched, on the device."""
    n, device = len(images), images.device

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(n, *shape, device=device) * (high - low) + low

    low, high = (float(v) for v in settings.scale)
    side, shift = uniform(low, high), float(settings.shift)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, :, 2] = uniform(-shift, shift, 2) * 2  # affine_grid's coordinates span [-1, 1]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    cropped = F.grid_sample(images, grid, padding_mode="reflection", align_corners=False)
    brightness, contrast = float(settings.brightness), float(settings.contrast)
    mean = cropped.mean(dim=(1, 2, 3), keepdim=True)
    changed = (cropped - mean) * uniform(1 - contrast, 1 + contrast, 1, 1, 1) + mean
    return (changed + uniform(-brightness, brightness, 1, 1, 1)).clamp(-1, 1)


class EncoderFamily(Family):
    name: ClassVar[str] = "encoder"
    inputs: ClassVar[tuple[RowInput, ...]] = (
        IMAGES,
        RowInput(IDENTITY, flip="none"),
        RowInput(PARTNER, flip="image"),
    )
    generator_key: ClassVar[str] = "encoder"
    capabilities: ClassVar[frozenset[str]] = frozenset({EMBED})

    def __init__(self, model_cfg: DictConfig, resolution: int, context: StepContext) -> None:
        super().__init__(model_cfg, resolution, context)
        self.backbone = place(
            load_effnet(model_cfg, option="model", switch="encoder=dlib"), context
        )
        self.encoder = place(self.build_generator(model_cfg, resolution), context)
        if self.encoder.last_stage is not None:  # fine-tuning starts from the ImageNet weights
            self.encoder.last_stage.load_state_dict(self.backbone.last_stage().state_dict())
        self.networks = {"encoder": self.encoder}
        self.frozen = {"backbone": self.backbone}
        self.optimizers = {
            "encoder": adam(self.encoder.parameters(), model_cfg.optimizer, context.device)
        }
        self.temperature = float(model_cfg.temperature)
        self.augment = model_cfg.augment

    def train_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        partner = batch.features[PARTNER].permute(0, 3, 1, 2).float().div(127.5).sub(1)
        views = augment(torch.cat([batch.images, partner.to(batch.images)]), self.augment)
        identity = batch.features[IDENTITY]
        # An unknown person is a person of their own: a label no other row has.
        labels = torch.where(identity >= 0, identity, -1 - batch.rows.to(identity.device))
        labels = torch.cat([labels, labels])
        with torch.no_grad(), self.context.autocast():
            features = head_input(
                self.backbone, self.encoder, self.backbone.preprocess(views, (-1.0, 1.0))
            )
        with self.context.autocast():
            embeddings = self.encoder(features).float()
        loss = supcon_loss(embeddings, labels, self.temperature)
        norm = optimizer_step(
            self.optimizers["encoder"], loss, self.encoder, self.context.grad_clip
        )
        with torch.no_grad():  # how often the nearest other embedding is one of the same person
            similarity = embeddings @ embeddings.T
            similarity.fill_diagonal_(float("-inf"))
            nearest_same = (labels[similarity.argmax(dim=1)] == labels).float().mean()
        return {"loss": loss.detach(), "nearest_same": nearest_same, "grad_norm": norm.detach()}

    @classmethod
    def build_generator(cls, model_cfg: DictConfig, resolution: int) -> FaceEncoderHead:
        last_stage = last_stage_architecture() if model_cfg.train_last_stage else None
        head = ProjectionHead(NUM_FEATURES, int(model_cfg.hidden_dim), int(model_cfg.embedding_dim))
        return FaceEncoderHead(last_stage, head)


FAMILY = EncoderFamily
