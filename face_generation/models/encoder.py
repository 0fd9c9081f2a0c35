"""The trained part of the face encoder (families/encoder.py): a projection head, after an
optional copy of the backbone's last stage.

Input: the frozen backbone's feature map (the input of its last stage when that stage is
trained here, else its final map). Output: unit-length identity embeddings, compared by
cosine similarity.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ProjectionHead(nn.Module):
    """Globally pooled features -> hidden -> embedding (SimCLR's two-layer MLP), unit length."""

    def __init__(self, in_features: int, hidden_dim: int, embedding_dim: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, embedding_dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers(features), dim=1)


class FaceEncoderHead(nn.Module):
    """Feature map -> (last stage, when given) -> global average pool -> projection head."""

    def __init__(self, last_stage: nn.Module | None, head: ProjectionHead) -> None:
        super().__init__()
        self.last_stage = last_stage
        self.head = head

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        if self.last_stage is not None:
            feature_map = self.last_stage(feature_map)
        return self.head(feature_map.mean(dim=(2, 3)))
