"""Evaluate a trained generator: `python -m face_generation.evaluate`.

Examples:
  python -m face_generation.evaluate model=vae                      (models/vae/model.pt)
  python -m face_generation.evaluate model=dcgan ckpt=models/dcgan/checkpoints/step-00000500.pt
  python -m face_generation.evaluate model=vae eval.num_samples=2000 eval.device=cpu
  python -m face_generation.evaluate --params params.yaml --model vae  (as `dvc repro` runs it)

Generates n = min(eval.num_samples, test split size) samples with the checkpoint's EMA
generator and a fixed seed (eval.seed), and scores them against as many packed test images
at the training resolution: fd_effnet, kid_effnet, precision/recall in EfficientNet-Lite0
feature space, fid_inception when Inception-v3's weights can be had, and for models that
reconstruct (the VAE, the translator) SSIM, PSNR, LPIPS and identity_* on reconstructions of
test images.
Writes metrics/<model>.json (metric name → value, for DVC), metrics/<model>.details.json (how
each was measured) and plots/<model>/ (samples, real vs generated, nearest training
neighbours, reconstructions), and logs them to the model's MLflow run (tracking.enabled).
"""

from __future__ import annotations

from collections.abc import Sequence

from face_generation.config import model_config_from_args, model_stage_parser
from face_generation.errors import reported_errors
from face_generation.evaluation.evaluate_model import evaluate
from face_generation.networks.weights import WeightsUnavailableError
from face_generation.runtime.checkpoint import CheckpointError


def main(argv: Sequence[str] | None = None) -> None:
    parser = model_stage_parser(__doc__ or "", "evaluate")
    args = parser.parse_args(argv)
    with reported_errors("evaluate", CheckpointError, WeightsUnavailableError):
        evaluate(model_config_from_args(args))


if __name__ == "__main__":
    main()
