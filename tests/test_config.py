"""The config tree composes, params.yaml is what it composes to, and every stage explains itself."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from face_generation.config import compose, load_params
from face_generation.pipeline import PARAMS_HEADER
from tests.conftest import REPO_ROOT


def test_params_yaml_is_the_composed_pipeline_config() -> None:
    expected = PARAMS_HEADER + OmegaConf.to_yaml(compose("pipeline"), resolve=True)
    assert (REPO_ROOT / "params.yaml").read_text() == expected, (
        "params.yaml is stale: regenerate it with `make params`"
    )


def test_overrides_apply_to_composed_and_loaded_configs() -> None:
    assert compose("config", ["data=folder", "data.path=x"]).data.resolution == 64
    cfg = load_params(REPO_ROOT / "params.yaml", ["data.resolution=48"])
    assert cfg.data.resolution == 48 and cfg.data.source == "lfw_subset"


@pytest.mark.parametrize("config_name", ["config", "pipeline"])
def test_experiments_are_named_recipes_over_the_defaults(config_name: str) -> None:
    full = compose(config_name, ["experiment=celeba64"])
    assert full.data.source == "celeba" and full.data.resolution == 64
    assert full.train.batch_size == 128 and full.train.hflip is True  # the rest stays
    sample = compose(config_name, ["experiment=celeba_sample"])
    assert sample.data.source == "folder" and sample.data.path.endswith("celeba-sample-10k")


def test_missing_params_file_names_the_fix(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="make params"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("stage", ["download", "split", "crop", "pack"])
def test_stage_help_explains_the_stage(stage: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"face_generation.data.{stage}", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    assert f"Stage `{stage}`" in result.stdout and "--params" in result.stdout
