"""The project's face encoder, `encoder=effnet_contrastive`: frozen EfficientNet-Lite0 and the
head a `model=encoder` checkpoint trained on identities (families/encoder.py).

Unit vectors of `model.embedding_dim` (128), differentiable. The checkpoint's EMA weights are used; the frozen
backbone comes from its own ImageNet weights, as in training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from face_generation.models.encoder import FaceEncoderHead
from face_generation.networks.effnet import EfficientNetLite0, load_effnet
from face_generation.networks.network import Features, FrozenNetwork
from face_generation.networks.weights import WeightsUnavailableError
from face_generation.runtime.checkpoint import CheckpointError
from face_generation.runtime.pixels import ImageBatch, ValueRange


def head_input(
    backbone: EfficientNetLite0, head: FaceEncoderHead, inputs: torch.Tensor
) -> torch.Tensor:
    """What the head reads from the frozen backbone: the input of the last stage when the head
    holds its own copy of that stage, else the backbone's final map."""
    return backbone.trunk(inputs) if head.last_stage is not None else backbone.final_map(inputs)


def contrastive_advice(reason: str) -> str:
    return (
        f"the fine-tuned face encoder cannot be loaded: {reason}. Train it first "
        "(`dvc repro train_encoder`, or `python -m face_generation.train model=encoder "
        "train=encoder`), set encoder.checkpoint=/path/to/model.pt, or use encoder=dlib"
    )


class ContrastiveEncoder(FrozenNetwork):
    """Faces -> the fine-tuned encoder's unit-length identity embeddings."""

    name = "effnet_contrastive"

    def __init__(
        self, backbone: EfficientNetLite0, head: FaceEncoderHead, checkpoint: Path
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head.eval().requires_grad_(False)
        self.num_features = head.head.embedding_dim
        self.weights_files = (*backbone.weights_files, checkpoint)

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.backbone.cache_key}"

    def preprocess(self, images: ImageBatch, value_range: ValueRange = None) -> torch.Tensor:
        return self.backbone.preprocess(images, value_range)

    def forward(self, inputs: torch.Tensor) -> Features:
        return Features(embedding=self.head(head_input(self.backbone, self.head, inputs)))


def load_contrastive_encoder(settings: DictConfig) -> ContrastiveEncoder:
    """From the `encoder` config group: the checkpoint at `settings.checkpoint`."""
    from face_generation.runtime.generator import load_generator

    checkpoint = Path(str(settings.checkpoint))
    if not checkpoint.is_file():
        raise WeightsUnavailableError(contrastive_advice(f"{checkpoint} does not exist"))
    try:
        trained = load_generator(checkpoint)
    except CheckpointError as error:
        raise WeightsUnavailableError(contrastive_advice(str(error))) from error
    if not isinstance(trained.network, FaceEncoderHead):
        raise WeightsUnavailableError(
            contrastive_advice(f"{checkpoint} holds a '{trained.name}' model, not the encoder")
        )
    backbone = load_effnet(trained.config.model, option="model", switch="encoder=dlib")
    return ContrastiveEncoder(backbone, trained.network, checkpoint)
