"""Typed schemas of the config groups in configs/: a wrong type or an unknown key fails when the
config is composed (or params.yaml read), in one line naming the key.

Each dataclass mirrors one YAML file of configs/<group>/ key by key, in the same order (so the
composed params.yaml reads as before), and carries types only: the numbers live in configs/.
`store_schemas` puts them in Hydra's ConfigStore as `schema/<group>` (`schema/model/<family>` for
the model families), and each YAML file names its schema first in its defaults list:

    defaults:
      - optional /schema@_here_: train
      - _self_

The `model`, `backbone` and `encoder` groups have one schema per file (`schema/<group>/<file>`),
found by the node's `name`; `experiment` files only set keys of the other groups, whose schemas
check them.

`optional`, because DVC composes params.yaml (`dvc exp run -S`) in its own process, where this
module is not imported; the stages check params.yaml against the same schemas when they read it
(config.load_params). Model configs are open-ended: a family without a schema here (a plugin,
the tests' `tiny`) composes untyped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

Seconds = Union[int, float]  # noqa: UP007 (OmegaConf reads typing.Union, not int | float)


@dataclass
class PathsConfig:
    data: str = MISSING
    metrics: str = MISSING
    models: str = MISSING
    plots: str = MISSING


@dataclass
class SplitConfig:
    fractions: dict[str, float] = MISSING
    seed: int = MISSING
    use_official: bool = MISSING


@dataclass
class CropConfig:
    method: str = MISSING
    min_size: int = MISSING
    margin: float = MISSING
    min_confidence: float = MISSING
    center_fraction: float = MISSING
    center_offset: float = MISSING
    header_bytes: int = MISSING
    batch_size: int = MISSING


@dataclass
class DownloadFile:
    id: str = MISSING
    md5: str = MISSING
    size: int = MISSING


@dataclass
class DownloadConfig:
    files: dict[str, DownloadFile] = MISSING
    url_template: str = MISSING
    # whole seconds: a Union here breaks OmegaConf's merge of an Optional node (2.3.1)
    timeout: int = MISSING
    retries: int = MISSING


@dataclass
class PackConfig:
    antialias: bool = MISSING
    workers: int = MISSING
    chunk_size: int = MISSING


@dataclass
class DataConfig:
    name: str = MISSING
    source: str = MISSING
    path: str | None = MISSING
    resolution: int = MISSING
    max_pixels: int = MISSING
    split: SplitConfig = field(default_factory=SplitConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    download: DownloadConfig | None = MISSING
    pack: PackConfig = field(default_factory=PackConfig)


@dataclass
class AdamConfig:
    lr: float = MISSING
    betas: list[float] = MISSING


@dataclass
class LatentSampling:
    temperature: float = MISSING


@dataclass
class ModelReads:
    """What a model's DVC stages read besides the packed faces (dvc.yaml's train and evaluate)."""

    features: str = MISSING  # the feature folder of its condition's network
    network: str = MISSING  # that network's code or weights
    code: str = MISSING  # the conditioning code


@dataclass
class ModelConfig:
    """What every family's config starts with; a family's schema adds its own keys."""

    name: str = MISSING


@dataclass
class VAEConfig(ModelConfig):
    latent_dim: int = MISSING
    base_channels: int = MISSING
    max_channels: int = MISSING
    leaky_slope: float = MISSING
    beta: float = MISSING
    reads: ModelReads = field(default_factory=ModelReads)
    optimizer: AdamConfig = field(default_factory=AdamConfig)
    sampling: LatentSampling = field(default_factory=LatentSampling)


@dataclass
class DCGANConfig(ModelConfig):
    latent_dim: int = MISSING
    generator_channels: int = MISSING
    discriminator_channels: int = MISSING
    max_channels: int = MISSING
    leaky_slope: float = MISSING
    init_std: float = MISSING
    reads: ModelReads = field(default_factory=ModelReads)
    optimizer: AdamConfig = field(default_factory=AdamConfig)
    sampling: LatentSampling = field(default_factory=LatentSampling)


@dataclass
class NoiseScheduleConfig:
    kind: str = MISSING
    timesteps: int = MISSING
    beta_start: float = MISSING
    beta_end: float = MISSING
    cosine_offset: float = MISSING
    max_beta: float = MISSING


@dataclass
class DiffusionSampling:
    steps: int = MISSING
    sampler: str = MISSING
    guidance: float = MISSING
    eta: float = MISSING


@dataclass
class DiffusionConfig(ModelConfig):
    channels: int = MISSING
    channel_mults: list[int] = MISSING
    num_res_blocks: Any = MISSING  # a number, or one per level
    attention_resolutions: list[int] = MISSING
    head_channels: int = MISSING
    groups: int = MISSING
    dropout: float = MISSING
    schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)
    prediction: str = MISSING
    loss_weighting: str = MISSING
    min_snr_gamma: float = MISSING
    condition: Any = MISSING  # null | {network: <its settings>, array: <name>}
    inputs: dict[str, Any] = field(default_factory=dict)
    cond_dim: int = MISSING
    cond_drop: float = MISSING
    reads: ModelReads = field(default_factory=ModelReads)
    optimizer: AdamConfig = field(default_factory=AdamConfig)
    sampling: DiffusionSampling = field(default_factory=DiffusionSampling)


@dataclass
class PyramidLossConfig:
    network: Any = MISSING  # the backbone's settings (configs/backbone/)
    grids: list[int] = MISSING
    pca_dims: Any = MISSING  # null | one per grid
    features_dir: str = MISSING
    distance: str = MISSING
    weights: list[float] = MISSING
    rows: Any = MISSING  # null | rows
    every: int = MISSING


@dataclass
class RealismConfig:
    enabled: bool = MISSING
    channels: int = MISSING
    weight: float = MISSING
    r1_gamma: float = MISSING


@dataclass
class ProgressiveConfig(ModelConfig):
    channels: list[int] = MISSING
    style_dim: int = MISSING
    noise_dim: int = MISSING
    leaky_slope: float = MISSING
    grow_every: int = MISSING
    fade_steps: int = MISSING
    pixel_weight: float = MISSING
    coarse_weight: float = MISSING
    coarse_to_fine_rows: int = MISSING
    pyramid: PyramidLossConfig = field(default_factory=PyramidLossConfig)
    discriminator: RealismConfig = field(default_factory=RealismConfig)
    condition: Any = MISSING  # null | {network: <its settings>, array: <name>}
    inputs: dict[str, Any] = field(default_factory=dict)
    cond_dim: int = MISSING
    cond_drop: float = MISSING
    reads: ModelReads = field(default_factory=ModelReads)
    optimizer: AdamConfig = field(default_factory=AdamConfig)
    sampling: LatentSampling = field(default_factory=LatentSampling)


@dataclass
class CondGANLossWeights:
    adversarial: float = MISSING
    identity: float = MISSING
    perceptual: float = MISSING
    r1: float = MISSING


@dataclass
class PerceptualSettings:
    network: str = MISSING
    image_size: int = MISSING
    antialias: bool = MISSING
    weights_path: str | None = MISSING
    levels: int = MISSING
    lpips: Any = MISSING  # eval.lpips's settings


@dataclass
class CondGANConfig(ModelConfig):
    code_dim: int = MISSING
    code_side: int = MISSING
    style_dim: int = MISSING
    generator_channels: int = MISSING
    discriminator_channels: int = MISSING
    max_channels: int = MISSING
    attention_side: int | None = MISSING
    head_channels: int = MISSING
    groups: int = MISSING
    leaky_slope: float = MISSING
    spectral_norm: bool = MISSING
    condition: Any = MISSING  # {network: <its settings>, array: <name>}
    inputs: dict[str, Any] = field(default_factory=dict)
    cond_dim: int = MISSING
    cond_drop: float = MISSING
    loss_weights: CondGANLossWeights = field(default_factory=CondGANLossWeights)
    r1_every: int = MISSING
    perceptual: PerceptualSettings = field(default_factory=PerceptualSettings)
    network_timeout_s: float = MISSING
    reads: ModelReads = field(default_factory=ModelReads)
    train: dict[str, Any] = field(default_factory=dict)  # loop settings over `train` (pipeline)
    optimizer: AdamConfig = field(default_factory=AdamConfig)
    sampling: LatentSampling = field(default_factory=LatentSampling)
    identity_network: Any = MISSING  # an encoder group's settings (configs/encoder/)


@dataclass
class TranslatorLossWeights:
    pixel: float = MISSING
    perceptual: float = MISSING
    identity: float = MISSING
    parameters: float = MISSING


@dataclass
class TranslatorConfig(ModelConfig):
    imitator_checkpoint: str = MISSING
    condition: Any = MISSING  # null: the translator is unconditional
    inputs: dict[str, Any] = field(default_factory=dict)  # features: {network, array}
    features_dim: int = MISSING
    hidden_dim: int = MISSING
    leaky_slope: float = MISSING
    loss_weights: TranslatorLossWeights = field(default_factory=TranslatorLossWeights)
    perceptual: PerceptualSettings = field(default_factory=PerceptualSettings)
    network_timeout_s: float = MISSING
    reads: ModelReads = field(default_factory=ModelReads)
    train: dict[str, Any] = field(default_factory=dict)  # loop settings over `train` (pipeline)
    optimizer: AdamConfig = field(default_factory=AdamConfig)
    sampling: LatentSampling = field(default_factory=LatentSampling)
    identity_network: Any = MISSING  # an encoder group's settings (configs/encoder/)


@dataclass
class EmaSettings:
    enabled: bool = MISSING
    decay: float = MISSING


@dataclass
class TrainSettings:
    """configs/train/; training/settings.py checks the ranges before training starts."""

    steps: int = MISSING
    batch_size: int = MISSING
    device: str = MISSING
    precision: str = MISSING
    compile: bool = MISSING
    num_workers: int = MISSING
    threads: int | None = MISSING
    hflip: bool = MISSING
    grad_clip: float | None = MISSING
    ema: EmaSettings = field(default_factory=EmaSettings)
    log_every: int = MISSING
    sample_every: int = MISSING
    sample_grid: int = MISSING
    ckpt_every: int = MISSING
    keep_checkpoints: int = MISSING
    resume: str | None = MISSING
    seed: int = MISSING
    nproc: int = MISSING
    dist_timeout_s: Seconds = MISSING


@dataclass
class EffnetBackbone:
    short_name: str = MISSING
    image_size: int = MISSING
    antialias: bool = MISSING
    weights_path: str | None = MISSING


@dataclass
class DinoBackbone:
    short_name: str = MISSING
    model: str = MISSING
    image_size: int = MISSING
    antialias: bool = MISSING
    weights_path: str | None = MISSING


@dataclass
class Backbones:
    effnet_lite0: EffnetBackbone = field(default_factory=EffnetBackbone)
    dinov2: DinoBackbone = field(default_factory=DinoBackbone)


@dataclass
class KidConfig:
    subsets: int = MISSING
    subset_size: int = MISSING
    degree: int = MISSING
    gamma: float | None = MISSING
    coef0: float = MISSING


@dataclass
class PrecisionRecallConfig:
    k: int = MISSING
    block: int = MISSING


@dataclass
class ReconstructionConfig:
    num_images: int = MISSING
    ssim_kernel_size: int = MISSING
    ssim_sigma: float = MISSING


@dataclass
class DlibConfig:
    threshold: float = MISSING
    weights_path: str | None = MISSING


@dataclass
class FacenetConfig:
    threshold: float = MISSING
    image_size: int = MISSING
    weights_path: str | None = MISSING


@dataclass
class IdentityConfig:
    encoder: str = MISSING
    num_images: int = MISSING
    face_box: str = MISSING
    fallback_box: list[float] = MISSING
    detector_upsample: int = MISSING
    far: float = MISSING
    calibration_faces: int = MISSING
    dlib: DlibConfig = field(default_factory=DlibConfig)
    facenet: FacenetConfig = field(default_factory=FacenetConfig)


@dataclass
class NeighboursConfig:
    samples: int = MISSING
    train_images: int = MISSING
    block: int = MISSING


@dataclass
class PlotsConfig:
    samples: int = MISSING
    real_vs_generated: int = MISSING
    reconstructions: int = MISSING
    columns: int = MISSING
    gutter: int = MISSING
    label_height: int = MISSING


@dataclass
class ReportConfig:
    chart_columns: int = MISSING
    chart_panel_inches: list[float] = MISSING
    dpi: int = MISSING
    smoke_scale_below: int = MISSING


@dataclass
class FidInceptionConfig:
    enabled: bool = MISSING
    antialias: bool = MISSING
    weights_path: str | None = MISSING


@dataclass
class LpipsConfig:
    enabled: bool = MISSING
    net: str = MISSING
    weights_path: str | None = MISSING


@dataclass
class ZeroShotConfig:
    num_references: int = MISSING
    samples_per_reference: int = MISSING
    confidence: float = MISSING
    bootstrap_resamples: int = MISSING
    bootstrap_seed: int = MISSING


@dataclass
class EvalConfig:
    num_samples: int = MISSING
    split: str = MISSING
    batch_size: int = MISSING
    sample_batch_size: int = MISSING
    sampling: dict[str, Any] = MISSING  # the family's sampling options, checked when sampling
    device: str = MISSING
    precision: str = MISSING
    threads: int | None = MISSING
    seed: int = MISSING
    cache_dir: str = MISSING
    network_timeout_s: Seconds = MISSING
    backbone: str = MISSING
    backbones: Backbones = field(default_factory=Backbones)
    kid: KidConfig = field(default_factory=KidConfig)
    precision_recall: PrecisionRecallConfig = field(default_factory=PrecisionRecallConfig)
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    neighbours: NeighboursConfig = field(default_factory=NeighboursConfig)
    plots: PlotsConfig = field(default_factory=PlotsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    fid_inception: FidInceptionConfig = field(default_factory=FidInceptionConfig)
    lpips: LpipsConfig = field(default_factory=LpipsConfig)
    zero_shot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    guidance_sweep: list[float] = MISSING


@dataclass
class ChampionConfig:
    alias: str = MISSING
    metric: str = MISSING
    min_samples: int = MISSING


@dataclass
class TrackingConfig:
    enabled: bool = MISSING
    host: str = MISSING
    port: int = MISSING
    uri: str | None = MISSING
    backend_store: str = MISSING
    backend_store_uri: str | None = MISSING
    artifacts: str = MISSING
    pid_file: str = MISSING
    log_file: str = MISSING
    workers: int = MISSING
    access_log: bool = MISSING
    start_timeout_s: Seconds = MISSING
    stop_timeout_s: Seconds = MISSING
    health_poll_s: Seconds = MISSING
    health_timeout_s: Seconds = MISSING
    server_env: dict[str, str] = MISSING
    experiment: str = MISSING
    registered_model_prefix: str = MISSING
    version_metrics: list[str] = MISSING
    champion: ChampionConfig = field(default_factory=ChampionConfig)
    spool_dir: str = MISSING
    keep_spool_after_delivery: bool = MISSING
    spool_compact_mb: int = MISSING
    request_timeout_s: Seconds = MISSING
    request_max_retries: int = MISSING
    upload_timeout_s: Seconds = MISSING
    flush_interval_s: Seconds = MISSING
    retry_backoff_s: Seconds = MISSING
    retry_backoff_max_s: Seconds = MISSING


@dataclass
class ServeLimits:
    max_n: int = MISSING
    max_seed: int = MISSING
    max_files: int = MISSING
    max_upload_mb: float = MISSING
    max_megapixels: float = MISSING
    max_form_kb: float = MISSING
    max_json_kb: float = MISSING
    options: dict[str, Any] = MISSING  # option name: [lowest, highest], checked when read


@dataclass
class ServeConfig:
    """configs/serve/: the web service (serve.py, serving/)."""

    host: str = MISSING
    port: int = MISSING
    device: str = MISSING
    use_ema: bool = MISSING
    models: dict[str, str] = MISSING
    test_faces: bool = MISSING
    default_n: int = MISSING
    log_level: str = MISSING
    access_log: bool = MISSING
    backlog: int = MISSING
    max_requests: int = MISSING
    head_timeout_s: Seconds = MISSING
    body_timeout_s: Seconds = MISSING
    grid_gutter: int = MISSING
    limits: ServeLimits = field(default_factory=ServeLimits)


@dataclass
class FaceEncoderAugment:
    scale: list[float] = MISSING
    shift: float = MISSING
    brightness: float = MISSING
    contrast: float = MISSING


@dataclass
class FaceEncoderConfig(ModelConfig):
    """The face encoder family (configs/model/encoder.yaml), trained by the pipeline beside the
    generators (`feature_models.encoder.model`)."""

    image_size: int = MISSING
    antialias: bool = MISSING
    weights_path: str | None = MISSING
    train_last_stage: bool = MISSING
    hidden_dim: int = MISSING
    embedding_dim: int = MISSING
    temperature: float = MISSING
    augment: FaceEncoderAugment = field(default_factory=FaceEncoderAugment)
    optimizer: AdamConfig = field(default_factory=AdamConfig)


@dataclass
class FeatureNetworkConfig:
    """What every network of the `backbone` and `encoder` groups starts with: the feature
    folder it writes and what a reader of that folder depends on (dvc.yaml)."""

    name: str = MISSING
    folder: str = MISSING
    requires: str = MISSING


@dataclass
class EffnetLite0BackboneConfig(FeatureNetworkConfig):
    image_size: int = MISSING
    antialias: bool = MISSING
    weights_path: str | None = MISSING


@dataclass
class Dinov2BackboneConfig(FeatureNetworkConfig):
    model: str = MISSING
    image_size: int = MISSING
    antialias: bool = MISSING
    weights_path: str | None = MISSING
    network_timeout_s: Seconds = MISSING


@dataclass
class DlibEncoderConfig(FeatureNetworkConfig):
    face_box: str = MISSING
    fallback_box: list[float] = MISSING
    detector_upsample: int = MISSING
    weights_path: str | None = MISSING
    workers: int = MISSING
    chunk_size: int = MISSING


@dataclass
class FacenetEncoderConfig(FeatureNetworkConfig):
    face_box: str = MISSING
    fallback_box: list[float] = MISSING
    detector_upsample: int = MISSING
    image_size: int = MISSING
    weights_path: str | None = MISSING
    network_timeout_s: Seconds = MISSING
    url: str | None = MISSING


@dataclass
class ContrastiveEncoderConfig:
    name: str = MISSING
    folder: str = MISSING
    checkpoint: str = MISSING
    requires: str = MISSING


@dataclass
class VerificationConfig:
    split: str = MISSING
    far: float = MISSING
    seed: int = MISSING
    workers: int = MISSING
    encoder_checkpoint: str = MISSING


@dataclass
class FeaturesConfig:
    grids: list[int] = MISSING
    pyramid_dims: list[int] | None = MISSING
    pca_fit_images: int = MISSING
    dtype: str = MISSING
    batch_size: int = MISSING
    device: str = MISSING
    threads: int | None = MISSING
    partner_seed: int = MISSING
    verification: VerificationConfig = field(default_factory=VerificationConfig)


GROUP_SCHEMAS: dict[str, type] = {
    "paths": PathsConfig,
    "data": DataConfig,
    "train": TrainSettings,
    "eval": EvalConfig,
    "tracking": TrackingConfig,
    "serve": ServeConfig,
    "features": FeaturesConfig,
}
FAMILY_SCHEMAS: dict[str, type[ModelConfig]] = {
    "vae": VAEConfig,
    "dcgan": DCGANConfig,
    "diffusion": DiffusionConfig,
    "progressive": ProgressiveConfig,
    "cond_gan": CondGANConfig,
    "translator": TranslatorConfig,
    "encoder": FaceEncoderConfig,
}
# Groups with one file per network, whose files differ: a schema per file, found by `name`.
NETWORK_SCHEMAS: dict[str, dict[str, type]] = {
    "backbone": {
        "effnet_lite0": EffnetLite0BackboneConfig,
        "dinov2_vits14": Dinov2BackboneConfig,
        "dinov2_vitb14": Dinov2BackboneConfig,
        "dinov2_vitl14": Dinov2BackboneConfig,
        "dinov2_vitg14": Dinov2BackboneConfig,
    },
    "encoder": {
        "dlib": DlibEncoderConfig,
        "facenet": FacenetEncoderConfig,
        "effnet_contrastive": ContrastiveEncoderConfig,
    },
}


def schema_of(group: str, node: Any) -> type | None:
    """The schema of a config group's node: its group's, or for a model its family's and for a
    network its file's (None for a family or network without one, and for keys that are not
    groups)."""
    if group == "model":
        return FAMILY_SCHEMAS.get(str(node.get("name")))
    if group in NETWORK_SCHEMAS:
        return NETWORK_SCHEMAS[group].get(str(node.get("name")))
    return GROUP_SCHEMAS.get(group)


def store_schemas() -> None:
    """Put every schema in Hydra's ConfigStore, where configs/ names them (idempotent)."""
    store = ConfigStore.instance()
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group="schema", name=group, node=schema)
    for family, schema in FAMILY_SCHEMAS.items():
        store.store(group="schema/model", name=family, node=schema)
    for group, networks in NETWORK_SCHEMAS.items():
        for network, schema in networks.items():
            store.store(group=f"schema/{group}", name=network, node=schema)
