"""The copies check: how close generated samples sit to their nearest training images.

In the backbone's feature space, the mean distance of samples to their nearest training image
is set beside the same for real test images: samples much closer than test images are copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from face_generation.evaluation.inputs import EvaluationInputs


@dataclass
class NearestTrain:
    summary: dict[str, Any]  # what metrics/<model>.details.json records under nearest_train
    train_images: np.ndarray  # the training images searched
    nearest: np.ndarray  # for each generated sample, the row of its nearest training image


@torch.inference_mode()
def nearest_neighbours(
    queries: np.ndarray, references: np.ndarray, block: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the index of and Euclidean distance to its nearest reference row."""
    targets = torch.from_numpy(np.asarray(references, np.float32)).to(device)
    indices, distances = [], []
    for start in range(0, len(queries), block):
        rows = torch.from_numpy(np.asarray(queries[start : start + block], np.float32))
        nearest = torch.cdist(rows.to(device), targets).min(dim=1)
        indices.append(nearest.indices.cpu())
        distances.append(nearest.values.cpu())
    return torch.cat(indices).numpy(), torch.cat(distances).double().numpy()


def nearest_train(inputs: EvaluationInputs, train: np.ndarray) -> NearestTrain:
    """Search the first eval.neighbours.train_images of the packed `train` split."""
    settings = inputs.eval_cfg.neighbours
    count = min(int(settings.train_images), len(train))
    train_images = np.asarray(train[:count])
    reference = inputs.real_features(inputs.backbone, train_images, "train")
    block = int(settings.block)
    nearest, distances = nearest_neighbours(
        inputs.generated_backbone_features, reference.features, block, inputs.device
    )
    _, test_distances = nearest_neighbours(
        inputs.real_backbone_features.features, reference.features, block, inputs.device
    )
    summary = {
        "train_images_searched": count,
        "mean_distance_generated": float(distances.mean()),
        "mean_distance_test": float(test_distances.mean()),
    }
    return NearestTrain(summary, train_images, nearest)
