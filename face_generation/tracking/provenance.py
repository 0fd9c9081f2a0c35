"""Where a run comes from: the code, data and DVC experiment behind it, and its config.

`run_tags` ties an MLflow run to the git commit (and whether the work tree differed from it),
the data hash and the DVC stage or experiment that ran it; `flatten_config` turns a config into
MLflow params; `registered_model_name` names a model family in the Model Registry and
`version_metadata` describes one of its versions.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

GENERATOR = "generator"  # the name a training run logs its model under


def flatten_config(cfg: DictConfig | Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"model.channels": "64", ...}`: a (resolved) config as MLflow params.

    Lists of plain values stay one param (`"[64, 128]"`); lists holding mappings are indexed
    (`"stages.0.size"`).
    """
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    assert isinstance(tree, Mapping)
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key!s}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, list) and any(isinstance(v, Mapping | list) for v in value):
            flat.update(flatten_config({str(i): v for i, v in enumerate(value)}, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = str(value)
    return flat


def git_commit(cwd: str | Path | None = None) -> tuple[str, bool] | None:
    """(HEAD commit, whether tracked files differ from it), or None outside a git work tree.

    By default the work tree holding this package's code, else the working directory.
    """
    if cwd is None:
        return git_commit(Path(__file__).resolve().parent) or git_commit(Path.cwd())
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head, bool(changes)


def run_tags(data_hash: str | None = None) -> dict[str, str]:
    """Tags that tie a run to its code, data and DVC experiment."""
    tags: dict[str, str] = {}
    if (commit := git_commit()) is not None:
        tags["git_commit"] = commit[0]
        tags["mlflow.source.git.commit"] = commit[0]  # shown by the MLflow UI
        tags["git_dirty"] = str(commit[1]).lower()
    if data_hash:
        tags["data_hash"] = data_hash
    # `dvc exp run` sets DVC_EXP_NAME and DVC_EXP_BASELINE_REV; every DVC stage sets DVC_STAGE.
    for variable, tag in (
        ("DVC_EXP_NAME", "dvc_exp"),
        ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev"),
        ("DVC_STAGE", "dvc_stage"),
    ):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


def version_metadata(
    family: str, resolution: int, steps: int, data_hash: str
) -> tuple[str, dict[str, str]]:
    """The description and tags of a registered model version: what it is, and the code and
    data it was trained from."""
    tags = {
        "family": family,
        "resolution": str(resolution),
        "steps": str(steps),
        **{
            key: value
            for key, value in run_tags(data_hash).items()
            if not key.startswith("mlflow.")
        },
    }
    commit = tags.get("git_commit", "unknown")[:12]
    if tags.get("git_dirty") == "true":
        commit += " with uncommitted changes"
    description = (
        f"{family} generator, {resolution}x{resolution} px, {steps} steps on data {data_hash}, "
        f"code {commit}"
    )
    return description, tags


def registered_model_name(cfg: DictConfig, family: str) -> str:
    """The Model Registry name of a model family: `<registered_model_prefix>-<family>`."""
    return f"{cfg.registered_model_prefix}-{family}"
