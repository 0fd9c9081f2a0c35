"""What conditioning needs below the families: the declarations in a model config and the
prior of random conditions that a conditional model carries (families/conditioning.py holds
the rest: condition dropout, the null condition's rows, photos → condition rows).

A conditional model's config names its arrays by the network that wrote them:

    condition:               # null: unconditional
      network: ${backbone}   # that network's settings (configs/backbone/ or configs/encoder/)
      array: embedding       # data/features/<res>/<network.name>/<array>/<split>.npy
    inputs:                  # further arrays each row carries (none by default)
      pyramid_8: {network: ${backbone}, array: pyramid_8, flip: map}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from face_generation.runtime.family import RowInput


def array_name(declaration: Any, key: str = "model.condition") -> str:
    """`<network>/<array>`: how the feature store and the loop name a declared array; a
    declaration of another shape is a ValueError saying the expected one."""
    network = declaration.get("network") if isinstance(declaration, DictConfig) else None
    if (
        not isinstance(network, DictConfig)
        or not declaration.get("array")
        or not network.get("name")
    ):
        raise ValueError(
            f"{key}={declaration!r}: expected null or {{network: <the settings of the network "
            "that wrote the array, e.g. ${backbone}>, array: <its name, e.g. embedding>}"
        )
    return f"{network.name}/{declaration.array}"


def declared_condition(model_cfg: DictConfig) -> str | None:
    """The array `model.condition` names, or None for an unconditional model."""
    condition = model_cfg.get("condition")
    return None if condition is None else array_name(condition)


def declared_inputs(model_cfg: DictConfig) -> tuple[RowInput, ...]:
    """The feature arrays a model config declares: its condition (a vector: never flipped)
    and each of `model.inputs` with its flip policy."""
    declared = []
    if model_cfg.get("condition") is not None:
        declared.append(RowInput(array_name(model_cfg.condition), flip="none"))
    for key, declaration in (model_cfg.get("inputs") or {}).items():
        name = array_name(declaration, f"model.inputs.{key}")
        declared.append(RowInput(name, flip=declaration.get("flip", "none")))
    return tuple(declared)


def check_condition_width(rows: torch.Tensor, width: int, array: str) -> None:
    """Rows of another width than the model's condition layer: a ValueError saying the fix."""
    if rows.shape[1:] != (width,):
        raise ValueError(
            f"model.cond_dim={width}, but the rows of {array} are {tuple(rows.shape[1:])}: "
            f"set model.cond_dim={rows[0].numel()}"
        )


@dataclass(frozen=True)
class ConditionPrior:
    """Random conditions like the training rows: each dimension drawn from a normal with the
    rows' mean and spread (a diagonal Gaussian; saved in the checkpoint as family state)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, rows: Any) -> ConditionPrior:
        """Fitted on N×D rows (an array or a tensor), in float64 for a stable spread."""
        values = torch.from_numpy(np.array(rows[:], dtype=np.float64))
        if len(values) < 2:
            raise ValueError(f"fitting random conditions needs 2 rows or more, got {len(values)}")
        return cls(values.mean(dim=0).float(), values.std(dim=0).float())

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n×D conditions on the CPU, the noise drawn from `generator`."""
        noise = torch.randn(n, len(self.mean), generator=generator)
        return self.mean + self.std * noise

    def state(self) -> dict[str, list[float]]:
        """Plain numbers, so that family states compare with == (float32 survives the trip)."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, list[float]]) -> ConditionPrior:
        return cls(torch.tensor(state["mean"]), torch.tensor(state["std"]))
