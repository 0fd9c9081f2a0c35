"""The family registry: `model.name` → its `Family` class, imported only when asked for.

A family `NAME` is the module `face_generation.families.NAME` and its `FAMILY` attribute, so
adding a family is adding that file (with its networks in models/ and its config in
configs/model/NAME.yaml). Families defined elsewhere (a plugin, a test) join with
`register_family`. Loading one family never imports another's networks.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from omegaconf import DictConfig

from face_generation.errors import UserError
from face_generation.runtime.family import Family

FAMILY_PACKAGE = "face_generation.families"

_registered: dict[str, type[Family]] = {}


class UnknownFamilyError(UserError):
    """`model.name` names no family; the message lists the known ones."""


def register_family(family: type[Family]) -> type[Family]:
    """Make `family` known under `family.name` (usable as a class decorator)."""
    _registered[family.name] = family
    return family


def family_names() -> list[str]:
    """Every family that `family_class` can load."""
    package = importlib.import_module(FAMILY_PACKAGE)
    modules = [info.name for info in pkgutil.iter_modules(package.__path__)]
    found = {name for name in modules if hasattr(_module(name), "FAMILY")}
    return sorted(found | set(_registered))


def family_class(name: str) -> type[Family]:
    """The family registered as `name`, importing its module on first use."""
    if name in _registered:
        return _registered[name]
    try:
        module = _module(name)
    except ModuleNotFoundError as error:
        if error.name != f"{FAMILY_PACKAGE}.{name}":
            raise  # the family exists but one of its own imports is missing
        module = None
    family = getattr(module, "FAMILY", None)
    if family is None:
        raise UnknownFamilyError(
            f"model.name={name!r} is not a model family; known families: {family_names()}"
        )
    return family


def family_for(cfg: DictConfig) -> type[Family]:
    """The family of the whole config's `cfg.model.name`."""
    return family_class(str(cfg.model.name))


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{FAMILY_PACKAGE}.{name}")
