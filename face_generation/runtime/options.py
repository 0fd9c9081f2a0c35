"""What a request may ask of a generator, read by one rule on every way in: the command line
(`inference`), the web service and the MLflow model.

The limits are `serve.limits` (configs/serve/default.yaml) everywhere: the seed's range and
each named option's [lowest, highest]. A sampling option takes values exactly of its default's
type (an integer where a float is expected is the same number; JSON writes 1.0 as 1): 2.7 is
not a step count, "hot" not a temperature, NaN or infinity no number at all. A value that
breaks the rule is an OptionError whose one line names the option, the accepted type and range,
and the value, in the same words through every path. The family may refuse more (an unknown
sampler): its ValueError says what it accepts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from face_generation.errors import UserError
from face_generation.runtime.family import sampling_options
from face_generation.runtime.generator import TrainedGenerator

# The package's own config tree (config.CONFIG_DIR; not imported from there, which needs Hydra).
SERVE_CONFIG = Path(__file__).parents[1] / "configs" / "serve" / "default.yaml"
TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


class OptionError(UserError):
    """A request value outside what the limits and the option's type accept."""


@dataclass(frozen=True)
class RequestLimits:
    max_n: int  # images one request may ask for
    max_seed: int  # seeds are 0..max_seed
    options: dict[str, tuple[float, float]]  # option name → (lowest, highest)

    @classmethod
    def from_config(cls, limits: DictConfig) -> RequestLimits:
        bounds = {}
        for name, pair in limits.options.items():
            low, high = pair
            bounds[str(name)] = (float(low), float(high))
        return cls(int(limits.max_n), int(limits.max_seed), bounds)


def configured_limits() -> RequestLimits:
    """The limits of configs/serve/default.yaml, read without Hydra: the MLflow model runs
    where only its pinned packages are installed (omegaconf, not hydra-core)."""
    serve = OmegaConf.load(SERVE_CONFIG)
    assert isinstance(serve, DictConfig)
    return RequestLimits.from_config(serve.limits)


def check_range(name: str, value: int, low: int, high: int) -> int:
    """`value` (an integer: n, the seed) when low ≤ value ≤ high; an OptionError otherwise."""
    if type(value) is not int or not low <= value <= high:
        raise OptionError(f"{name} must be between {low} and {high}, got {value!r}")
    return value


def accepted(default: Any, bounds: tuple[float, float] | None) -> str:
    """What an option takes, in words: `an integer from 1 to 1000`, `text`."""
    words = TYPE_WORDS.get(type(default), f"values like {default!r}")
    if bounds is not None and type(default) in (int, float):
        low, high = bounds
        words += f" from {low:g} to {high:g}"
    return words


def option_value(name: str, value: Any, default: Any, bounds: tuple[float, float] | None) -> Any:
    """`value` for the option `name` (whose default is `default`) by the module's rule."""
    kind = type(default)
    if kind is float and type(value) is int:
        value = float(value)
    fits = default is None or type(value) is kind
    if fits and kind is float:
        fits = math.isfinite(value)
    if fits and bounds is not None and kind in (int, float):
        fits = bounds[0] <= value <= bounds[1]
    if not fits:
        raise OptionError(f"option {name} takes {accepted(default, bounds)}, got {value!r}")
    return value


def read_options(
    requested: Mapping[str, Any], trained: TrainedGenerator, limits: RequestLimits
) -> dict[str, Any]:
    """Every sampling option of the generator as a call will use it: its defaults with the
    requested values in place, each by `option_value` (typed by the family's own default);
    an unknown name lists the known ones."""
    defaults = sampling_options(trained.family)
    chosen = {}
    for name, value in requested.items():
        if name not in defaults:
            known = ", ".join(defaults) or "none"
            raise OptionError(f"{trained.name} has no option {name[:40]!r}; its options: {known}")
        chosen[name] = option_value(name, value, defaults[name], limits.options.get(name))
    return trained.options(**chosen)


def from_text(text: str) -> Any:
    """A command-line value as a JSON request would carry it: 50 → 50, 0.8 → 0.8, true →
    True, anything that is not a JSON number or boolean (heun, abc) → the text itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int | float) else text
