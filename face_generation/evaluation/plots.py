"""The evaluation's image plots (plots/<model>/*.png), built from uint8 N x H x W x 3 arrays.

    samples.png            the first generated samples
    real_vs_generated.png  real test images (left panel) beside generated samples (right)
    nearest_train.png      each generated sample beside its nearest training image in the
                           backbone's feature space: near-copies reveal memorisation
    reconstructions.png    test images beside their reconstructions (models that reconstruct)

A grid has `columns` cells per row (fewer when there are fewer images), `gutter` black pixels
between cells and around the edge; a pair (sample | neighbour) is one cell twice as wide; a
panel has a caption strip of `label_height` pixels on top. Files are written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, ImageDraw

from face_generation.runtime.images import save_png, to_uint8

CAPTION_COLOUR = (255, 255, 255)
CAPTION_MARGIN = 2  # pixels left of and above the caption text


def grid(images: np.ndarray, columns: int, gutter: int) -> np.ndarray:
    """Images (uint8 N x H x W x 3) in rows of `columns`, on black with `gutter`-pixel gaps."""
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(
            f"need a non-empty uint8 N x H x W x 3 array, got {images.dtype} {images.shape}"
        )
    count, height, width, channels = images.shape
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    canvas = np.zeros(
        (rows * (height + gutter) + gutter, columns * (width + gutter) + gutter, channels),
        np.uint8,
    )
    for index, image in enumerate(images):
        top = gutter + (index // columns) * (height + gutter)
        left = gutter + (index % columns) * (width + gutter)
        canvas[top : top + height, left : left + width] = image
    return canvas


def pairs(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-aligned images side by side, one 2W-wide image per pair."""
    if first.shape != second.shape:
        raise ValueError(f"pairs need two arrays of one shape, got {first.shape}, {second.shape}")
    return np.concatenate([first, second], axis=2)


def captioned(panel: np.ndarray, text: str, label_height: int) -> np.ndarray:
    """`panel` under a black strip of `label_height` pixels holding `text`."""
    strip = Image.new("RGB", (panel.shape[1], label_height))
    ImageDraw.Draw(strip).text((CAPTION_MARGIN, CAPTION_MARGIN), text, fill=CAPTION_COLOUR)
    return np.concatenate([np.asarray(strip), panel], axis=0)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two panels next to each other, top-aligned on black."""
    height = max(left.shape[0], right.shape[0])
    canvas = np.zeros((height, left.shape[1] + right.shape[1], 3), np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: right.shape[0], left.shape[1] :] = right
    return canvas


def samples_plot(generated: np.ndarray, count: int, columns: int, gutter: int, path: Path) -> Path:
    return save_png(grid(generated[:count], columns, gutter), path)


def real_vs_generated_plot(
    real: np.ndarray,
    generated: np.ndarray,
    count: int,
    columns: int,
    gutter: int,
    label_height: int,
    path: Path,
) -> Path:
    """`count` real images (left) and as many generated ones (right), each panel captioned."""
    count = min(count, len(real), len(generated))
    left = captioned(grid(real[:count], columns, gutter), f"real ({count})", label_height)
    right = captioned(
        grid(generated[:count], columns, gutter), f"generated ({count})", label_height
    )
    return save_png(side_by_side(left, right), path)


def pairs_plot(
    first: np.ndarray,
    second: np.ndarray,
    caption: str,
    columns: int,
    gutter: int,
    label_height: int,
    path: Path,
) -> Path:
    """Row-aligned pairs, each pair one cell: `first[i]` on the left, `second[i]` on the right."""
    return save_png(
        captioned(grid(pairs(first, second), columns, gutter), caption, label_height), path
    )


def evaluation_plots(
    eval_cfg: DictConfig,
    folder: Path,
    test: np.ndarray,
    generated: np.ndarray,
    train: np.ndarray,
    nearest: np.ndarray,
    feature_network: str,
    reconstructions: tuple[np.ndarray, torch.Tensor] | None,
) -> list[Path]:
    """plots/<model>/: samples, real vs generated, nearest training images, and (for models that
    reconstruct) test images beside their reconstructions."""
    settings = eval_cfg.plots
    columns, gutter, label = int(settings.columns), int(settings.gutter), int(settings.label_height)
    shown = min(int(eval_cfg.neighbours.samples), len(generated))
    plots = [
        samples_plot(generated, int(settings.samples), columns, gutter, folder / "samples.png"),
        real_vs_generated_plot(
            np.asarray(test),
            generated,
            int(settings.real_vs_generated),
            columns,
            gutter,
            label,
            folder / "real_vs_generated.png",
        ),
        pairs_plot(
            generated[:shown],
            train[nearest[:shown]],
            f"generated | nearest training image ({feature_network} features)",
            columns,
            gutter,
            label,
            folder / "nearest_train.png",
        ),
    ]
    if reconstructions is not None:
        originals, outputs = reconstructions
        count = min(int(settings.reconstructions), len(originals))
        plots.append(
            pairs_plot(
                originals[:count],
                to_uint8(outputs[:count]),
                "test image | reconstruction",
                columns,
                gutter,
                label,
                folder / "reconstructions.png",
            )
        )
    return plots
