"""The `train` settings (configs/train/), checked before training touches anything.

Their schema is `TrainSettings` (config_schema.py), the train group's schema in Hydra, so a
wrong type (`train.steps=abc`) or an unknown key (`train.stepz=5`) already fails when the config
is composed. Here, for any config handed to `train()`, the same schema again plus the ranges:
a value out of range (`train.batch_size=0`) is a `SettingsError` with one line naming the
setting and what it accepts, raised before any file is moved or any MLflow run is created.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from face_generation.config_schema import TrainSettings
from face_generation.errors import UserError
from face_generation.runtime.device import PRECISIONS, pick_device

RESUME_MODES = ("auto", "matching")


class SettingsError(UserError):
    """A setting the run cannot use; the message names it and what it accepts."""


def check_train_settings(train_cfg: DictConfig) -> TrainSettings:
    """`cfg.train` as TrainSettings, or a SettingsError naming the first bad setting."""
    try:
        values = OmegaConf.to_container(train_cfg, resolve=True)  # ${seed} points outside `train`
        merged = OmegaConf.merge(OmegaConf.structured(TrainSettings), values)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "train"
        reason = str(error.msg).splitlines()[0]
        raise SettingsError(f"train.{key.removeprefix('train.')}: {reason}") from None
    settings = OmegaConf.to_object(merged)
    assert isinstance(settings, TrainSettings)
    counts = ("steps", "batch_size", "log_every", "sample_every", "sample_grid", "ckpt_every",
              "keep_checkpoints")  # fmt: skip
    problems = [(name, getattr(settings, name), "at least 1") for name in counts
                if getattr(settings, name) < 1]  # fmt: skip
    if settings.num_workers < 0:
        problems.append(("num_workers", settings.num_workers, "0 or more"))
    if settings.threads is not None and settings.threads < 1:
        problems.append(("threads", settings.threads, "null (torch's choice) or at least 1"))
    if settings.precision not in PRECISIONS:
        problems.append(("precision", settings.precision, ", ".join(PRECISIONS)))
    if settings.grad_clip is not None and settings.grad_clip <= 0:
        problems.append(("grad_clip", settings.grad_clip, "null (off) or a positive norm"))
    if not 0.0 <= settings.ema.decay < 1.0:
        problems.append(("ema.decay", settings.ema.decay, "in [0, 1)"))
    if problems:
        name, value, accepted = problems[0]
        raise SettingsError(f"train.{name}={value} is not allowed: it must be {accepted}")
    try:
        pick_device(settings.device)
    except UserError as error:
        raise SettingsError(f"train.device={settings.device}: {error}") from None
    return settings


def check_learning_rates(node: Any, prefix: str = "model") -> None:
    """Every `lr` under the model config is a positive number (a SettingsError otherwise), so
    `model.optimizer.lr=-1` is one line before training, not the optimiser's traceback."""
    if not isinstance(node, DictConfig):
        return
    for key, value in node.items():
        name = f"{prefix}.{key!s}"
        if key == "lr" and not (isinstance(value, int | float) and value > 0):
            raise SettingsError(f"{name}={value} is not allowed: it must be a positive number")
        check_learning_rates(value, name)
