"""Evaluate one trained generator: `evaluate(cfg, checkpoint)` (the CLI is face_generation/evaluate.py).

Read top to bottom: checkpoint → the packed split at the training resolution → n samples
from the EMA generator with a fixed seed → features → distribution metrics → reconstruction
metrics (models that reconstruct) → plots → metrics/<model>.json → the model's MLflow run.

n = min(eval.num_samples, size of eval.split): n generated samples against the first n real
images of the split. The real side's features come from the cache (evaluation/real_stats.py),
so a second evaluation of the same packed data embeds only its samples. Every metric in the
JSON carries its value, the network that produced it, its N and the data hash; a metric whose
network cannot be loaded here carries the reason instead of a value.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from face_generation.data.tables import packed_dir
from face_generation.evaluation.frechet import feature_statistics, frechet_distance_between
from face_generation.evaluation.identity import identity_similarity
from face_generation.evaluation.kid import kid
from face_generation.evaluation.plots import (
    pairs_plot,
    real_vs_generated_plot,
    samples_plot,
)
from face_generation.evaluation.precision_recall import precision_recall
from face_generation.evaluation.real_stats import RealFeatures, packed_data_hash, real_features
from face_generation.evaluation.reconstruction import psnr, ssim
from face_generation.features.backbone import build_feature_extractor
from face_generation.features.identity import FaceIdentityEncoder
from face_generation.features.inception import load_inception
from face_generation.features.lpips import load_lpips, lpips_distance
from face_generation.features.network import EmbeddingNetwork, embed_images
from face_generation.features.pixels import batches, resolve_device, to_float_nchw
from face_generation.features.weights import WeightsUnavailableError
from face_generation.training.checkpoint import load_checkpoint, load_generator
from face_generation.training.data import DataError, load_split
from face_generation.training.families import sample_images
from face_generation.training.images import to_uint8

METRICS_FORMAT = 1  # bumped when the layout of metrics/<model>.json changes
PIXELS = "pixels"  # the "network" of SSIM and PSNR
SAMPLE_RULE = "n = min(num_samples, split_size): n generated vs the first n real"


@dataclass
class EvaluationResult:
    metrics_path: Path  # metrics/<model>.json
    record: dict[str, Any]  # what it holds
    plots: list[Path] = field(default_factory=list)
    run_id: str | None = None  # the MLflow run (or spool key) the numbers went to


def default_checkpoint(cfg: DictConfig) -> Path:
    """`ckpt` when set, else models/<model>/model.pt (what training writes last)."""
    if cfg.get("ckpt"):
        return Path(str(cfg.ckpt))
    return Path(cfg.paths.models) / str(cfg.model.name) / "model.pt"


def metric_prefix(cfg: DictConfig) -> str:
    """The backbone's short name that distribution metrics carry: fd_<it>, kid_<it>, ..."""
    settings = cfg.eval.backbones.get(cfg.eval.backbone)
    if settings is None:
        raise ValueError(
            f"unknown eval.backbone={cfg.eval.backbone!r}; configured: {sorted(cfg.eval.backbones)}"
        )
    return str(settings.get("short_name") or cfg.eval.backbone)


def generate(
    network: nn.Module, count: int, seed: int, batch_size: int, progress: str | None = None
) -> np.ndarray:
    """`count` samples as uint8 N x H x W x 3 (quantised as saved images are), noise from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    with tqdm(total=count, desc=progress, unit="img", disable=progress is None) as bar:
        for start in range(0, count, batch_size):
            images = sample_images(network, min(batch_size, count - start), generator=generator)
            chunks.append(to_uint8(images))
            bar.update(len(chunks[-1]))
    return np.concatenate(chunks)


@torch.no_grad()
def reconstruct(
    network: nn.Module, images: np.ndarray, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Reconstructions of uint8 N x H x W x 3 images: float N x 3 x H x W in [-1, 1] on the CPU."""
    network.eval()
    outputs = []
    for batch in batches(images, batch_size):
        pixels = to_float_nchw(batch, None, (-1.0, 1.0), device=device)
        outputs.append(cast(Any, network).reconstruct(pixels).float().cpu())
    return torch.cat(outputs)


def measured(value: float, network: str, data_hash: str, **details: Any) -> dict:
    """A metric entry: value, network, N and any other `details`, data hash.

    A non-finite value (PSNR of identical images) is written as null with a note: JSON has no
    infinity, and DVC and MLflow would choke on it.
    """
    entry: dict[str, Any] = {"available": True, "value": float(value)}
    if not math.isfinite(value):
        entry = {"available": True, "value": None, "note": f"not finite ({value})"}
    return {**entry, "network": network, **details, "data_hash": data_hash}


def unavailable(reason: str, network: str, data_hash: str) -> dict:
    """A metric that could not be computed here: the reason instead of a value."""
    return {"available": False, "reason": reason, "network": network, "data_hash": data_hash}


def cached_real(
    cfg: DictConfig,
    network: EmbeddingNetwork,
    images: np.ndarray,
    data_hash: str,
    split: str,
    device: torch.device,
) -> RealFeatures:
    """Features of real `images` (the first rows of `split`), from the cache or embedded now."""
    return real_features(
        cfg.eval.cache_dir,
        str(getattr(network, "cache_key", type(network).__name__)),
        data_hash,
        split,
        len(images),
        lambda: embed_images(
            network,
            images,
            batch_size=int(cfg.eval.batch_size),
            device=device,
            progress=f"real {split} features",
        ),
    )


def distribution_metrics(
    cfg: DictConfig,
    real: np.ndarray,
    generated: np.ndarray,
    data_hash: str,
    device: torch.device,
) -> tuple[dict[str, dict], dict[str, np.ndarray], EmbeddingNetwork]:
    """fd_/kid_/precision_/recall_<backbone> and fid_inception; also the backbone features."""
    eval_cfg = cfg.eval
    prefix = metric_prefix(cfg)
    network = build_feature_extractor(eval_cfg)
    name = network.cache_key
    counts = {"n_generated": len(generated), "n_real": len(real)}
    reference = cached_real(cfg, network, real, data_hash, str(eval_cfg.split), device)
    fake = embed_images(
        network,
        generated,
        batch_size=int(eval_cfg.batch_size),
        device=device,
        progress="generated features",
    )
    metrics: dict[str, dict] = {
        f"fd_{prefix}": measured(
            frechet_distance_between(reference.statistics, feature_statistics(fake)),
            name,
            data_hash,
            **counts,
        )
    }
    kernel = kid(
        reference.features,
        fake,
        subsets=int(eval_cfg.kid.subsets),
        subset_size=int(eval_cfg.kid.subset_size),
        degree=int(eval_cfg.kid.degree),
        gamma=eval_cfg.kid.gamma,
        coef0=float(eval_cfg.kid.coef0),
        seed=int(eval_cfg.seed),
    )
    metrics[f"kid_{prefix}"] = measured(
        kernel.mean,
        name,
        data_hash,
        **counts,
        std=kernel.std,
        subsets=kernel.subsets,
        subset_size=kernel.subset_size,
    )
    k = int(eval_cfg.precision_recall.k)
    if min(len(real), len(generated)) > k:
        pr = precision_recall(
            reference.features,
            fake,
            k=k,
            block=int(eval_cfg.precision_recall.block),
            device=device,
        )
        for metric, value in (("precision", pr.precision), ("recall", pr.recall)):
            metrics[f"{metric}_{prefix}"] = measured(value, name, data_hash, **counts, k=k)
    else:
        for metric in ("precision", "recall"):
            metrics[f"{metric}_{prefix}"] = unavailable(
                f"k={k} nearest neighbours need more than {k} images on each side",
                name,
                data_hash,
            )
    metrics["fid_inception"] = inception_metric(cfg, real, generated, data_hash, device)
    return metrics, {"real": reference.features, "generated": fake}, network


def inception_metric(
    cfg: DictConfig,
    real: np.ndarray,
    generated: np.ndarray,
    data_hash: str,
    device: torch.device,
) -> dict:
    """The standard FID when Inception-v3's weights can be loaded, else why not."""
    settings = cfg.eval.fid_inception
    if not settings.enabled:
        return unavailable(
            "disabled by eval.fid_inception.enabled=false", "inception_v3", data_hash
        )
    try:
        network = load_inception(settings, float(cfg.eval.network_timeout_s))
    except WeightsUnavailableError as error:
        return unavailable(str(error), "inception_v3", data_hash)
    reference = cached_real(cfg, network, real, data_hash, str(cfg.eval.split), device)
    fake = embed_images(
        network,
        generated,
        batch_size=int(cfg.eval.batch_size),
        device=device,
        progress="generated Inception features",
    )
    distance = frechet_distance_between(reference.statistics, feature_statistics(fake))
    return measured(
        distance, network.cache_key, data_hash, n_generated=len(generated), n_real=len(real)
    )


def reconstruction_metrics(
    cfg: DictConfig,
    network: nn.Module,
    test: np.ndarray,
    data_hash: str,
    device: torch.device,
) -> tuple[dict[str, dict], np.ndarray, torch.Tensor]:
    """SSIM, PSNR, LPIPS and identity_* of reconstructions of the first test images.

    Returns the metrics, the originals and their reconstructions (for the plot).
    """
    eval_cfg = cfg.eval
    count = min(int(eval_cfg.reconstruction.num_images), len(test))
    originals = np.asarray(test[:count])
    outputs = reconstruct(network, originals, int(eval_cfg.sample_batch_size), device)
    settings = eval_cfg.reconstruction
    structural = ssim(
        outputs,
        originals,
        (-1.0, 1.0),
        kernel_size=int(settings.ssim_kernel_size),
        sigma=float(settings.ssim_sigma),
    )
    metrics = {
        "ssim": measured(structural, PIXELS, data_hash, n=count),
        "psnr": measured(psnr(outputs, originals, (-1.0, 1.0)), PIXELS, data_hash, n=count),
    }
    lpips_cfg = eval_cfg.lpips
    lpips_name = f"lpips_{lpips_cfg.net}"
    if not lpips_cfg.enabled:
        metrics["lpips"] = unavailable(
            "disabled by eval.lpips.enabled=false", lpips_name, data_hash
        )
    else:
        try:
            model = load_lpips(lpips_cfg, float(eval_cfg.network_timeout_s))
        except WeightsUnavailableError as error:
            metrics["lpips"] = unavailable(str(error), lpips_name, data_hash)
        else:
            value = lpips_distance(
                model, outputs, originals, (-1.0, 1.0), int(eval_cfg.batch_size), device
            )
            metrics["lpips"] = measured(value, lpips_name, data_hash, n=count)
    metrics.update(identity_metrics(cfg, originals, outputs, data_hash, device))
    return metrics, originals, outputs


def identity_metrics(
    cfg: DictConfig,
    originals: np.ndarray,
    outputs: torch.Tensor,
    data_hash: str,
    device: torch.device,
) -> dict[str, dict]:
    """identity_cosine, identity_distance, identity_same_person: original vs reconstruction."""
    identity_cfg = cfg.eval.identity
    count = min(int(identity_cfg.num_images), len(originals))
    names = ("identity_cosine", "identity_distance", "identity_same_person")
    try:
        encoder = FaceIdentityEncoder.from_config(
            identity_cfg, float(cfg.eval.network_timeout_s), str(device)
        )
    except WeightsUnavailableError as error:
        encoder_name = str(identity_cfg.encoder)
        return {name: unavailable(str(error), encoder_name, data_hash) for name in names}
    first = encoder.embed(originals[:count], progress="identity: originals")
    second = encoder.embed(outputs[:count], (-1.0, 1.0), progress="identity: reconstructions")
    similarity = identity_similarity(first, second, encoder.threshold)
    details = {"n": count, "faces_detected": encoder.faces_detected}
    values = (similarity.cosine_mean, similarity.distance_mean, similarity.same_person_share)
    entries = {
        name: measured(value, encoder.name, data_hash, **details)
        for name, value in zip(names, values, strict=True)
    }
    entries["identity_same_person"]["threshold"] = similarity.threshold
    return entries


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


def nearest_train(
    cfg: DictConfig,
    backbone: EmbeddingNetwork,
    packed: Path,
    resolution: int,
    data_hash: str,
    features: dict[str, np.ndarray],
    device: torch.device,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Nearest training images of the generated samples in the backbone's feature space.

    Returns a summary (mean distance to the nearest training image, for generated samples and
    for real test images: samples much closer than test images are copies), the train array
    and the nearest row of every generated sample.
    """
    train = load_split(packed, "train", resolution)
    count = min(int(cfg.eval.neighbours.train_images), len(train))
    train_images = np.asarray(train[:count])
    reference = cached_real(cfg, backbone, train_images, data_hash, "train", device)
    block = int(cfg.eval.neighbours.block)
    nearest, distances = nearest_neighbours(
        features["generated"], reference.features, block, device
    )
    _, test_distances = nearest_neighbours(features["real"], reference.features, block, device)
    summary = {
        "train_images_searched": count,
        "mean_distance_generated": float(distances.mean()),
        "mean_distance_test": float(test_distances.mean()),
    }
    return summary, train_images, nearest


def make_plots(
    cfg: DictConfig,
    folder: Path,
    test: np.ndarray,
    generated: np.ndarray,
    train: np.ndarray,
    nearest: np.ndarray,
    reconstructions: tuple[np.ndarray, torch.Tensor] | None,
) -> list[Path]:
    settings = cfg.eval.plots
    columns, gutter, label = int(settings.columns), int(settings.gutter), int(settings.label_height)
    shown = min(int(cfg.eval.neighbours.samples), len(generated))
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
            f"generated | nearest training image ({metric_prefix(cfg)} features)",
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


def write_json(record: dict[str, Any], path: Path) -> Path:
    """Atomically, so DVC and the report never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    os.replace(temporary, path)
    return path


def evaluate(cfg: DictConfig, checkpoint: Path | None = None) -> EvaluationResult:
    """Score the checkpoint of `cfg.model` and write metrics/<model>.json and plots/<model>/."""
    started = time.perf_counter()
    checkpoint = checkpoint or default_checkpoint(cfg)
    name = str(cfg.model.name)
    state = load_checkpoint(checkpoint, expected_model=name)
    step, run_id = int(state["step"]), state.get("run_id")
    del state
    device = resolve_device(str(cfg.eval.device))
    network, trained_cfg = load_generator(checkpoint, device)

    # The data at the resolution the model was trained at.
    resolution = int(trained_cfg.data.resolution)
    if resolution != int(cfg.data.resolution):
        print(
            f"[evaluate] the checkpoint was trained at {resolution}px (data.resolution is "
            f"{cfg.data.resolution}): scoring against the {resolution}px packed data"
        )
        merged = OmegaConf.merge(cfg, {"data": {"resolution": resolution}})
        assert isinstance(merged, DictConfig)
        cfg = merged
    packed = packed_dir(cfg)
    split = str(cfg.eval.split)
    test = load_split(packed, split, resolution)
    data_hash = packed_data_hash(packed)
    count = min(int(cfg.eval.num_samples), len(test))
    if count < 2:
        raise DataError(
            f"{packed / f'{split}.npy'} holds {len(test)} image(s); distribution metrics need at "
            "least 2: pack more data or choose another eval.split"
        )
    real = np.asarray(test[:count])
    print(
        f"[evaluate] {name} (step {step}, {checkpoint}) on {device}: {count} generated vs "
        f"{count} real {split} images ({len(test)} in the split), {resolution}px, data {data_hash}"
    )

    # Samples and metrics.
    seed = int(cfg.eval.seed)
    generated = generate(network, count, seed, int(cfg.eval.sample_batch_size), "sampling")
    metrics, features, backbone = distribution_metrics(cfg, real, generated, data_hash, device)
    reconstructions = None
    if hasattr(network, "reconstruct"):
        recon_metrics, originals, outputs = reconstruction_metrics(
            cfg, network, test, data_hash, device
        )
        metrics.update(recon_metrics)
        reconstructions = (originals, outputs)
    neighbours, train, nearest = nearest_train(
        cfg, backbone, packed, resolution, data_hash, features, device
    )

    # Outputs.
    plots = make_plots(
        cfg, Path(cfg.paths.plots) / name, test, generated, train, nearest, reconstructions
    )
    record = {
        "format": METRICS_FORMAT,
        "model": name,
        "checkpoint": str(checkpoint),
        "step": step,
        "resolution": resolution,
        "data_hash": data_hash,
        "split": split,
        "split_size": len(test),
        "num_samples": int(cfg.eval.num_samples),
        "n_generated": count,
        "n_real": count,
        "sample_rule": SAMPLE_RULE,
        "seed": seed,
        "feature_network": str(backbone.cache_key),
        "metrics": metrics,
        "nearest_train": neighbours,
    }
    metrics_path = write_json(record, Path(cfg.paths.metrics) / f"{name}.json")
    result = EvaluationResult(metrics_path, record, plots)
    if cfg.tracking.get("enabled", False):
        from face_generation.evaluation.mlflow_run import log_evaluation

        result.run_id = log_evaluation(cfg, run_id, result)
    print(
        f"[evaluate] done in {time.perf_counter() - started:.0f} s: {metrics_path}, "
        f"plots in {plots[0].parent}/"
    )
    for metric, entry in metrics.items():
        shown = f"{entry['value']:.6g}" if entry.get("value") is not None else "unavailable"
        print(f"  {metric:<22} {shown:>12}  {entry['network']}")
    return result
