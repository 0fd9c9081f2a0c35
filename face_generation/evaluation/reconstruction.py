"""SSIM and PSNR of reconstructions against the images they reconstruct (torchmetrics).

Both compare RGB images in [0, 1] (data range 1), whatever range they came in (see
`runtime/pixels.py`), and return the mean over images of the per-image value: PSNR is
computed per image and then averaged (a batch-level PSNR of the pooled MSE would let a few
bad reconstructions hide), and is infinite for identical images. SSIM follows torchmetrics:
the SSIM map of reflection-padded images averaged over every pixel (scikit-image averages
the interior only, a few hundredths higher on 64 x 64 images). Both run in float64, batched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from face_generation.runtime.pixels import ImageBatch, ValueRange, batches, to_float_nchw


def check_pair(reconstructions: ImageBatch, originals: ImageBatch) -> None:
    if len(reconstructions) != len(originals) or len(originals) == 0:
        raise ValueError(
            f"need row-aligned, non-empty batches, got {len(reconstructions)} and {len(originals)}"
        )


def mean_per_image(
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    reconstructions: ImageBatch,
    originals: ImageBatch,
    value_range: ValueRange,
    batch_size: int,
) -> float:
    """Mean over row-aligned pairs of `metric`, which gives one value per image in [0, 1]."""
    check_pair(reconstructions, originals)
    total = 0.0
    for fake, real in zip(
        batches(reconstructions, batch_size), batches(originals, batch_size), strict=True
    ):
        total += float(
            metric(
                to_float_nchw(fake, value_range, (0.0, 1.0), dtype=torch.float64),
                to_float_nchw(real, value_range, (0.0, 1.0), dtype=torch.float64),
            ).sum()
        )
    return total / len(originals)


@torch.inference_mode()
def ssim(
    reconstructions: ImageBatch,
    originals: ImageBatch,
    value_range: ValueRange = None,
    kernel_size: int = 11,
    sigma: float = 1.5,
    batch_size: int = 256,
) -> float:
    """Mean SSIM (Gaussian window, as Wang et al. 2004) over row-aligned image pairs."""
    # imported here: torchmetrics pulls in scipy.signal, 2 s of every evaluate stage's start
    from torchmetrics.functional.image import structural_similarity_index_measure

    def per_image(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        values = structural_similarity_index_measure(
            fake, real, kernel_size=kernel_size, sigma=sigma, data_range=1.0, reduction="none"
        )
        assert isinstance(values, torch.Tensor)  # one value per image (no full-image output)
        return values

    return mean_per_image(per_image, reconstructions, originals, value_range, batch_size)


@torch.inference_mode()
def psnr(
    reconstructions: ImageBatch,
    originals: ImageBatch,
    value_range: ValueRange = None,
    batch_size: int = 256,
) -> float:
    """Mean over image pairs of the per-image PSNR in dB (data range 1)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # see ssim

    def per_image(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return peak_signal_noise_ratio(fake, real, data_range=1.0, reduction="none", dim=(1, 2, 3))

    return mean_per_image(per_image, reconstructions, originals, value_range, batch_size)
