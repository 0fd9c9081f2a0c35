"""Evaluate one trained generator: `evaluate(cfg, checkpoint)` (the CLI is face_generation/evaluate.py).

Read top to bottom: checkpoint → the packed split at the training resolution → the metrics
the family's capabilities allow (evaluation/metrics.py), computed from shared, lazily built
inputs (evaluation/inputs.py: samples from the EMA generator with a fixed seed, conditioned
on the split's feature rows for conditional families, features, reconstructions) → the copies
check → plots → the guidance sweep of conditional models (evaluation/guidance.py) →
metrics/<model>.json and its details (evaluation/record.py) → the model's MLflow run
(evaluation/mlflow_run.py).

n = min(eval.num_samples, size of eval.split): n generated samples against the first n real
images of the split. The real side's features come from the cache (evaluation/real_stats.py),
so a second evaluation of the same packed data embeds only its samples.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from face_generation.data.packed import DataError, load_split
from face_generation.data.tables import packed_dir
from face_generation.evaluation.guidance import guidance_sweep, sweeps
from face_generation.evaluation.inputs import EvaluationInputs
from face_generation.evaluation.metrics import (
    RECONSTRUCTIONS,
    SAMPLES,
    applicable_metrics,
    provided,
)
from face_generation.evaluation.neighbours import nearest_train
from face_generation.evaluation.plots import evaluation_plots
from face_generation.evaluation.real_stats import packed_data_hash
from face_generation.evaluation.record import (
    METRICS_FORMAT,
    SAMPLE_RULE,
    EvaluationResult,
    measured,
    write_record,
)
from face_generation.runtime.checkpoint import CheckpointError, training_run_id
from face_generation.runtime.device import pick_device, use_threads
from face_generation.runtime.generator import load_generator


def default_checkpoint(cfg: DictConfig) -> Path:
    """`ckpt` when set, else models/<model>/model.pt (what training writes last)."""
    if cfg.get("ckpt"):
        return Path(str(cfg.ckpt))
    return Path(cfg.paths.models) / str(cfg.model.name) / "model.pt"


def evaluate(cfg: DictConfig, checkpoint: Path | None = None) -> EvaluationResult:
    """Score the checkpoint of `cfg.model`; write metrics/<model>.json, its details and
    plots/<model>/."""
    started = time.perf_counter()
    checkpoint = checkpoint or default_checkpoint(cfg)
    name = str(cfg.model.name)
    device = pick_device(str(cfg.eval.device))
    use_threads(cfg.eval.threads)
    trained = load_generator(checkpoint, device, precision=str(cfg.eval.precision))
    if trained.name != name:
        raise CheckpointError(
            f"checkpoint {checkpoint} holds a '{trained.name}' model, not '{name}': "
            f"pass a {name} checkpoint, or evaluate with model={trained.name}"
        )
    if SAMPLES not in provided(trained):
        raise ValueError(f"the {name} family does not generate images: nothing to evaluate")

    # The data at the resolution the model was trained at.
    resolution = trained.resolution
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
    print(
        f"[evaluate] {name} (step {trained.step}, {checkpoint}) on {device}: {count} generated vs "
        f"{count} real {split} images ({len(test)} in the split), {resolution}px, data {data_hash}"
    )

    # The metrics the family's capabilities allow, from inputs computed once.
    overrides = {str(key): value for key, value in cfg.eval.sampling.items()}
    inputs = EvaluationInputs(cfg, trained, test, count, data_hash, device)
    metrics: dict[str, dict] = {}
    for metric in applicable_metrics(trained, cfg.eval):
        metrics.update(metric.compute(inputs))
    neighbours = nearest_train(inputs, load_split(packed, "train", resolution))

    # Outputs (and the family's own scores and plots, for a family that has them).
    plots_dir = Path(cfg.paths.plots) / name
    extras = trained.family.evaluation_extras(
        trained.network,
        trained.config.model,
        cfg.eval,
        inputs.real,
        inputs.generated,
        inputs.conditions,
        plots_dir,
    )
    if extras is not None:
        for metric_name, value in extras.metrics.items():
            metrics[metric_name] = measured(
                value, extras.network, data_hash, n=count, in_dvc_metrics=False
            )
    plots = evaluation_plots(
        cfg.eval,
        plots_dir,
        test,
        inputs.generated,
        neighbours.train_images,
        neighbours.nearest,
        inputs.prefix,
        inputs.reconstructions if RECONSTRUCTIONS in provided(trained) else None,
    )
    plots.extend(extras.plots if extras is not None else [])
    sweep: list[dict] = []
    if sweeps(inputs):
        sweep, files = guidance_sweep(inputs, Path(cfg.paths.plots) / name)
        plots.extend(files)
    record = {
        "format": METRICS_FORMAT,
        "model": name,
        "checkpoint": str(checkpoint),
        "step": trained.step,
        "resolution": resolution,
        "data_hash": data_hash,
        "split": split,
        "split_size": len(test),
        "num_samples": int(cfg.eval.num_samples),
        "n_generated": count,
        "n_real": count,
        "sample_rule": SAMPLE_RULE,
        "seed": int(cfg.eval.seed),
        # the scores depend on how the samples were drawn: the options and their cost
        "sampling": trained.options(**overrides),
        "network_evaluations": trained.network_evaluations(**overrides),
        "sampling_precision": trained.precision,
        "feature_network": str(inputs.backbone.cache_key),
        "metrics": metrics,
        "nearest_train": neighbours.summary,
        "condition": trained.condition,
        "guidance_sweep": sweep,
    }
    metrics_path = write_record(record, Path(cfg.paths.metrics))
    result = EvaluationResult(metrics_path, record, plots)
    if cfg.tracking.get("enabled", False):
        from face_generation.evaluation.mlflow_run import log_evaluation

        run_id = trained.run_id or training_run_id(checkpoint, trained.step)
        result.run_id = log_evaluation(cfg, run_id, result)
    print(
        f"[evaluate] done in {time.perf_counter() - started:.0f} s: {metrics_path}, "
        f"plots in {plots[0].parent}/"
    )
    for metric_name, entry in metrics.items():
        score = entry.get("value")
        shown = f"{score:.6g}" if score is not None else entry.get("note", "unavailable")
        print(f"  {metric_name:<22} {shown:>12}  {entry['network']}")
    return result
