"""The metrics of an evaluation, as objects: each declares what it needs and computes entries.

A metric is configured once from `cfg.eval` and asked for its entries with the evaluation's
shared inputs (evaluation/inputs.py). `needs` says what the family must provide: SAMPLES
(it generates), RECONSTRUCTIONS (it reconstructs), CONDITIONS (it is conditional). The
orchestration (evaluation/evaluate_model.py) runs the metrics of `METRICS` whose needs the
family's declared capabilities meet, so adding a metric is adding a class here and listing it.

The maths are small functions in their own modules: frechet.py, kid.py, precision_recall.py,
reconstruction.py (SSIM, PSNR), identity.py; the networks live in face_generation/networks/.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import ClassVar

import numpy as np
from omegaconf import DictConfig

from face_generation.evaluation.frechet import feature_statistics, frechet_distance_between
from face_generation.evaluation.identity import (
    Calibration,
    bootstrap_gap,
    identity_similarity,
    row_cosines,
)
from face_generation.evaluation.inputs import EvaluationInputs
from face_generation.evaluation.kid import kid
from face_generation.evaluation.precision_recall import precision_recall
from face_generation.evaluation.reconstruction import psnr, ssim
from face_generation.evaluation.record import PIXELS, measured, unavailable
from face_generation.networks.identity import FaceIdentityEncoder
from face_generation.networks.inception import load_inception
from face_generation.networks.lpips import load_lpips, lpips_distance
from face_generation.networks.weights import WeightsUnavailableError
from face_generation.runtime.family import RECONSTRUCT, SAMPLE
from face_generation.runtime.generator import TrainedGenerator

SAMPLES = "samples"
RECONSTRUCTIONS = "reconstructions"
CONDITIONS = "conditions"

Entries = dict[str, dict]


def provided(trained: TrainedGenerator) -> frozenset[str]:
    """What a model's declared capabilities and condition let the metrics ask for."""
    family = trained.family
    offers = {SAMPLES: SAMPLE in family.capabilities}
    offers[RECONSTRUCTIONS] = RECONSTRUCT in family.capabilities
    offers[CONDITIONS] = trained.condition is not None
    return frozenset(need for need, offered in offers.items() if offered)


class Metric:
    """Base: `needs`, and `compute(inputs)` → {metric name: entry} (evaluation/record.py)."""

    needs: ClassVar[frozenset[str]]

    def __init__(self, eval_cfg: DictConfig) -> None:
        self.eval_cfg = eval_cfg

    def compute(self, inputs: EvaluationInputs) -> Entries:
        raise NotImplementedError


class BackboneDistribution(Metric):
    """fd_/kid_/precision_/recall_<backbone>: samples against real test images in the feature
    space of eval.backbone (EfficientNet-Lite0 by default)."""

    needs = frozenset({SAMPLES})

    def compute(self, inputs: EvaluationInputs) -> Entries:
        prefix, network = inputs.prefix, str(inputs.backbone.cache_key)
        real, fake = inputs.real_backbone_features, inputs.generated_backbone_features
        counts = {"n_generated": len(fake), "n_real": len(real.features)}
        distance = frechet_distance_between(real.statistics, feature_statistics(fake))
        settings = self.eval_cfg.kid
        kernel = kid(
            real.features,
            fake,
            subsets=int(settings.subsets),
            subset_size=int(settings.subset_size),
            degree=int(settings.degree),
            gamma=settings.gamma,
            coef0=float(settings.coef0),
            seed=int(self.eval_cfg.seed),
        )
        entries = {
            f"fd_{prefix}": measured(distance, network, inputs.data_hash, **counts),
            f"kid_{prefix}": measured(
                kernel.mean,
                network,
                inputs.data_hash,
                **counts,
                std=kernel.std,
                subsets=kernel.subsets,
                subset_size=kernel.subset_size,
            ),
        }
        k = int(self.eval_cfg.precision_recall.k)
        if min(len(real.features), len(fake)) <= k:
            reason = f"k={k} nearest neighbours need more than {k} images on each side"
            for metric in ("precision", "recall"):
                entries[f"{metric}_{prefix}"] = unavailable(reason, network, inputs.data_hash)
            return entries
        pr = precision_recall(
            real.features,
            fake,
            k=k,
            block=int(self.eval_cfg.precision_recall.block),
            device=inputs.device,
        )
        for metric, value in (("precision", pr.precision), ("recall", pr.recall)):
            entries[f"{metric}_{prefix}"] = measured(
                value, network, inputs.data_hash, **counts, k=k
            )
        return entries


class InceptionFID(Metric):
    """fid_inception: the standard FID, when Inception-v3's weights can be had."""

    needs = frozenset({SAMPLES})

    def compute(self, inputs: EvaluationInputs) -> Entries:
        settings = self.eval_cfg.fid_inception
        if not settings.enabled:
            reason = "disabled by eval.fid_inception.enabled=false"
            return {"fid_inception": unavailable(reason, "inception_v3", inputs.data_hash)}
        try:
            network = load_inception(settings, float(self.eval_cfg.network_timeout_s))
        except WeightsUnavailableError as error:
            return {"fid_inception": unavailable(str(error), "inception_v3", inputs.data_hash)}
        real = inputs.real_features(network, inputs.real, str(self.eval_cfg.split))
        fake = inputs.embed(network, inputs.generated, "generated Inception features")
        distance = frechet_distance_between(real.statistics, feature_statistics(fake))
        counts = {"n_generated": len(fake), "n_real": len(real.features)}
        return {"fid_inception": measured(distance, network.cache_key, inputs.data_hash, **counts)}


class PixelReconstruction(Metric):
    """ssim and psnr of reconstructions of test images."""

    needs = frozenset({RECONSTRUCTIONS})

    def compute(self, inputs: EvaluationInputs) -> Entries:
        originals, outputs = inputs.reconstructions
        settings = self.eval_cfg.reconstruction
        structural = ssim(
            outputs,
            originals,
            (-1.0, 1.0),
            kernel_size=int(settings.ssim_kernel_size),
            sigma=float(settings.ssim_sigma),
        )
        count = len(originals)
        return {
            "ssim": measured(structural, PIXELS, inputs.data_hash, n=count),
            "psnr": measured(
                psnr(outputs, originals, (-1.0, 1.0)), PIXELS, inputs.data_hash, n=count
            ),
        }


class LpipsReconstruction(Metric):
    """lpips of reconstructions, when the LPIPS backbone's weights can be had."""

    needs = frozenset({RECONSTRUCTIONS})

    def compute(self, inputs: EvaluationInputs) -> Entries:
        settings = self.eval_cfg.lpips
        network = f"lpips_{settings.net}"
        if not settings.enabled:
            reason = "disabled by eval.lpips.enabled=false"
            return {"lpips": unavailable(reason, network, inputs.data_hash)}
        try:
            model = load_lpips(settings, float(self.eval_cfg.network_timeout_s))
        except WeightsUnavailableError as error:
            return {"lpips": unavailable(str(error), network, inputs.data_hash)}
        originals, outputs = inputs.reconstructions
        value = lpips_distance(
            model, outputs, originals, (-1.0, 1.0), int(self.eval_cfg.batch_size), inputs.device
        )
        return {"lpips": measured(value, network, inputs.data_hash, n=len(originals))}


UNCALIBRATED = "uncalibrated (no pairs of known people in the eval split)"


def judged_shares(entries: Entries, names: tuple[str, ...], calibration: Calibration) -> None:
    """Same-person shares are read at the calibrated threshold: without one (nobody's person
    known) the entries say "uncalibrated" instead of a share, which would mislead."""
    for name in names:
        entries[name]["threshold"] = calibration.threshold
        if calibration.threshold is None:
            entries[name].update(value=None, note=UNCALIBRATED)


class ReconstructionIdentity(Metric):
    """identity_cosine, identity_distance, identity_same_person: each test face against its
    reconstruction, judged by eval.identity.encoder (dlib by default); the share at the
    judge's threshold calibrated on the eval split's real pairs, as zero-shot identity's."""

    needs = frozenset({RECONSTRUCTIONS})
    names = ("identity_cosine", "identity_distance", "identity_same_person")

    def compute(self, inputs: EvaluationInputs) -> Entries:
        settings = self.eval_cfg.identity
        try:
            encoder = FaceIdentityEncoder.from_config(
                settings, float(self.eval_cfg.network_timeout_s), str(inputs.device)
            )
        except WeightsUnavailableError as error:
            name = str(settings.encoder)
            return {
                metric: unavailable(str(error), name, inputs.data_hash) for metric in self.names
            }
        originals, outputs = inputs.reconstructions
        count = min(int(settings.num_images), len(originals))
        first, calibration = inputs.judged_real_faces(encoder, count)  # originals = test[:count]
        second = encoder.embed(outputs[:count], (-1.0, 1.0), progress="identity: reconstructions")
        threshold = encoder.threshold if calibration.threshold is None else calibration.threshold
        similarity = identity_similarity(first, second, threshold)
        details = {
            "n": count,
            "faces_detected": encoder.faces_detected,  # of every face the judge embedded here
            "calibration": asdict(calibration),
        }
        values = (similarity.cosine_mean, similarity.distance_mean, similarity.same_person_share)
        entries = {
            metric: measured(value, encoder.name, inputs.data_hash, **details)
            for metric, value in zip(self.names, values, strict=True)
        }
        judged_shares(entries, ("identity_same_person",), calibration)
        return entries


def independent_judge(
    eval_cfg: DictConfig, condition: str, device: str
) -> FaceIdentityEncoder | str:
    """The identity judge (eval.identity.encoder) for a model conditioned on `condition`, or
    why there is none: it must not be the network whose embedding conditioned the model."""
    judge = str(eval_cfg.identity.encoder)
    if condition.split("/")[0] == judge:
        return (
            f"the model is conditioned on {condition}, so {judge} cannot judge it independently: "
            f"condition on another network or set eval.identity.encoder to another one"
        )
    try:
        return FaceIdentityEncoder.from_config(
            eval_cfg.identity, float(eval_cfg.network_timeout_s), device
        )
    except WeightsUnavailableError as error:
        return str(error)


class ZeroShotIdentity(Metric):
    """zero_shot_identity_cosine, zero_shot_same_person: eval-split faces (people never trained
    on) against k samples conditioned on each one's row, judged by eval.identity.encoder (dlib);
    zero_shot_random_cosine, zero_shot_random_same_person: the same samples against another
    eval-split face (the next one), the baseline that says what chance gives."""

    needs = frozenset({SAMPLES, CONDITIONS})
    names = (
        "zero_shot_identity_cosine",
        "zero_shot_same_person",
        "zero_shot_random_cosine",
        "zero_shot_random_same_person",
    )

    def compute(self, inputs: EvaluationInputs) -> Entries:
        condition = str(inputs.trained.condition)
        judge = independent_judge(self.eval_cfg, condition, str(inputs.device))
        if isinstance(judge, str):
            network = str(self.eval_cfg.identity.encoder)
            return {name: unavailable(judge, network, inputs.data_hash) for name in self.names}
        settings = self.eval_cfg.zero_shot
        references = min(int(settings.num_references), inputs.count)
        k = int(settings.samples_per_reference)
        if references < 2:
            reason = "the random-reference baseline needs at least 2 references"
            return {name: unavailable(reason, judge.name, inputs.data_hash) for name in self.names}
        assert inputs.conditions is not None
        samples = inputs.sample_conditioned(
            inputs.conditions[:references].repeat_interleave(k, dim=0), "zero-shot samples"
        )
        real, calibration = inputs.judged_real_faces(judge, references)
        threshold = judge.threshold if calibration.threshold is None else calibration.threshold
        generated = judge.embed(samples, progress="identity: zero-shot samples")
        same = identity_similarity(np.repeat(real, k, axis=0), generated, threshold)
        other = np.repeat(np.roll(real, -1, axis=0), k, axis=0)  # reference i+1 for samples of i
        chance = identity_similarity(other, generated, threshold)
        gap, low, high = bootstrap_gap(
            row_cosines(np.repeat(real, k, axis=0), generated),
            row_cosines(other, generated),
            references,
            int(settings.bootstrap_resamples),
            float(settings.confidence),
            int(settings.bootstrap_seed),
        )
        # where a generated score sits between strangers and the same person, on real pairs
        details = {
            "references": references,
            "samples_per_reference": k,
            "condition": condition,
            "calibration": asdict(calibration),
        }
        values = (
            same.cosine_mean,
            same.same_person_share,
            chance.cosine_mean,
            chance.same_person_share,
        )
        entries = {
            name: measured(value, judge.name, inputs.data_hash, **details)
            for name, value in zip(self.names, values, strict=True)
        }
        judged_shares(
            entries, ("zero_shot_same_person", "zero_shot_random_same_person"), calibration
        )
        # how far the conditioned samples are above chance, with its bootstrap interval
        entries["zero_shot_identity_cosine"]["gap_to_random"] = {
            "value": gap,
            "interval": [low, high],
            "confidence": float(settings.confidence),
            "resamples": int(settings.bootstrap_resamples),
            "resampled": "references",
        }
        return entries


# Every metric an evaluation may compute, in the order of the metrics file and the report.
METRICS: tuple[type[Metric], ...] = (
    BackboneDistribution,
    InceptionFID,
    PixelReconstruction,
    LpipsReconstruction,
    ReconstructionIdentity,
    ZeroShotIdentity,
)


def applicable_metrics(trained: TrainedGenerator, eval_cfg: DictConfig) -> list[Metric]:
    """The metrics whose needs the model's declared capabilities meet, configured from eval_cfg."""
    available = provided(trained)
    return [metric(eval_cfg) for metric in METRICS if metric.needs <= available]
