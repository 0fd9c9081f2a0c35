"""Where a run comes from: the code, data and DVC experiment behind it, and its config.

`run_tags` ties an MLflow run to the git commit (and whether the code differed from it), the
data hash, the DVC stage or experiment that ran it and the parameters it changed;
`flatten_config` turns a config into MLflow params; `registered_model_name` names a model
family in the Model Registry and `version_metadata` describes one of its versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH
from omegaconf import DictConfig, OmegaConf


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


# What `dvc exp run -S` and `dvc repro` rewrite in the work tree: an experiment's parameters
# and results, recorded as such (tags dvc_exp, params_overrides), not as uncommitted code.
PIPELINE_FILES = ("params.yaml", "dvc.lock", "metrics/")
PARAMS_FILE = "params.yaml"


def git_commit(cwd: str | Path | None = None) -> tuple[str, bool] | None:
    """(HEAD commit, whether tracked code differs from it), or None outside a git work tree.

    Changes to PIPELINE_FILES do not count: every DVC experiment makes them. By default the
    work tree holding this package's code, else the working directory.
    """
    if cwd is None:
        return git_commit(Path(__file__).resolve().parent) or git_commit(Path.cwd())
    try:
        head = _git(cwd, "rev-parse", "HEAD").strip()
        top = Path(_git(cwd, "rev-parse", "--show-toplevel").strip())
        changed = _git(top, "diff", "HEAD", "--name-only", "--no-renames").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head, any(not path.startswith(PIPELINE_FILES) for path in changed)


def params_overrides(cwd: str | Path | None = None) -> list[str]:
    """`key=value` for each parameter of the working directory's params.yaml that differs from
    the committed one (what `dvc exp run -S` or an override changed); [] when there is none."""
    directory = Path(cwd or Path.cwd())
    try:
        committed = _git(directory, "show", f"HEAD:./{PARAMS_FILE}")
        current = (directory / PARAMS_FILE).read_text()
    except (OSError, subprocess.CalledProcessError):
        return []
    trees = [yaml.safe_load(text) for text in (committed, current)]
    if not all(isinstance(tree, dict) for tree in trees):
        return []
    before, after = (flatten_config(tree) for tree in trees)
    changed = sorted(
        key for key in before.keys() | after.keys() if before.get(key) != after.get(key)
    )
    return [f"{key}={after.get(key, '(removed)')}" for key in changed]


def entry_point() -> str:
    """The running command: the module of `python -m MODULE`, else the script's file name
    (`python -c` for code given on the command line, as a pytest-xdist worker runs)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is not None:
        return str(spec.name).removesuffix(".__main__")
    return "python -c" if sys.argv[0] == "-c" else Path(sys.argv[0]).name


def queued_experiment(cwd: str | Path | None = None) -> bool:
    """True inside a DVC experiment run from the queue: DVC runs those in a temporary copy of
    the repository under .dvc/tmp/exps/, not in the user's workspace."""
    directory = Path(cwd or Path.cwd()).resolve()
    return any(parent.parts[-3:] == (".dvc", "tmp", "exps") for parent in directory.parents)


def _git(cwd: str | Path, *arguments: str) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout


def run_tags(data_hash: str | None = None) -> dict[str, str]:
    """Tags that tie a run to its code, data, parameters and DVC experiment."""
    # The UI's Source column: the command that ran (`face_generation.train`), a local run.
    tags = {"mlflow.source.name": entry_point(), "mlflow.source.type": "LOCAL"}
    if (commit := git_commit()) is not None:
        tags["git_commit"] = commit[0]
        tags["mlflow.source.git.commit"] = commit[0]  # shown by the MLflow UI
        tags["git_dirty"] = str(commit[1]).lower()
    if overrides := params_overrides():
        tags["params_overrides"] = " ".join(overrides)[:MAX_TAG_VAL_LENGTH]
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
    if queued_experiment():
        tags["dvc_exp_queued"] = "true"
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
        commit += " with uncommitted code changes"
    experiment = f", DVC experiment {tags['dvc_exp']}" if "dvc_exp" in tags else ""
    overrides = f" ({tags['params_overrides']})" if "params_overrides" in tags else ""
    description = (
        f"{family} generator, {resolution}x{resolution} px, {steps} steps on data {data_hash}, "
        f"code {commit}{experiment}{overrides}"
    )
    return description, tags


def registered_model_name(cfg: DictConfig, family: str) -> str:
    """The Model Registry name of a model family: `<registered_model_prefix>-<family>`."""
    return f"{cfg.registered_model_prefix}-{family}"
