"""DVC knows what each model reads: the real `dvc` CLI on a copy of the project whose stage
outputs are stand-ins recorded with `dvc commit` (no stage runs), so `dvc status` shows which
stages a change reaches through dvc.yaml's dependencies, derived from each model's `reads`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from face_generation.pipeline import write_params
from tests.project_copy import copy_project

pytestmark = pytest.mark.slow  # the real dvc CLI on a copy of the project: seconds per command

FEATURES = Path("data/features/32/effnet_lite0")
# the models whose configs read the backbone's embedding (models.<name>.reads.features)
READ_BACKBONE = ("diffusion", "progressive", "cond_gan", "translator")


def stages_of(*models: str) -> set[str]:
    return {f"{stage}@{model}" for model in models for stage in ("train", "evaluate")}


def dvc(root: Path, *arguments: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *arguments], cwd=root, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"dvc {' '.join(arguments)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def changed(root: Path) -> set[str]:
    """The stages `dvc status` says are out of date."""
    return set(json.loads(dvc(root, "status", "--json")))


def stand_in_outputs(root: Path) -> None:
    """A small file at every stage output and missing dependency (a folder holding one file
    where the path has no suffix), as if the pipeline had run."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            for entry in [*stage.outs, *stage.deps]:
                path = root / str(entry.def_path)
                if path.exists() or not hasattr(entry, "def_path"):
                    continue
                if path.suffix:  # e.g. data/raw/manifest.csv, inside the download stage's output
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(f"{entry.def_path}\n")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "stand-in").write_text(f"{entry.def_path}\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project copied, params.yaml composed from configs/, outputs recorded in dvc.lock."""
    root = copy_project(tmp_path_factory.mktemp("reads") / "project")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    write_params([], root / "params.yaml")
    stand_in_outputs(root)
    dvc(root, "commit", "--force", "--quiet")
    assert changed(root) == set()
    return root


def test_a_backbone_setting_reaches_its_features_stage_and_the_models_that_carry_it(
    project: Path,
) -> None:
    write_params(["backbone.image_size=96"], project / "params.yaml")
    # diffusion, cond_gan and the translator read the backbone's embedding and progressive it
    # and its pyramids: their configs carry the backbone's settings, so their stages and the
    # report are out of date; vae and dcgan are not
    assert changed(project) == {"features", "report", *stages_of(*READ_BACKBONE)}
    write_params([], project / "params.yaml")
    assert changed(project) == set()


def test_new_feature_rows_reach_exactly_the_stages_that_read_them(project: Path) -> None:
    (project / FEATURES / "embedding.npy").write_text("new rows")  # the features stage reran
    dvc(project, "commit", "--force", "--quiet", "features")
    # train@ and evaluate@<model> list the folder because models.<model>.reads names it
    assert changed(project) == {"verify", *stages_of(*READ_BACKBONE)}
    (project / FEATURES / "embedding.npy").unlink()
    dvc(project, "commit", "--force", "--quiet")
    assert changed(project) == set()


def test_an_unconditional_model_does_not_depend_on_the_features(project: Path) -> None:
    write_params(["models.diffusion.condition=null"], project / "params.yaml")
    dvc(project, "commit", "--force", "--quiet")
    (project / FEATURES / "embedding.npy").write_text("new rows")
    dvc(project, "commit", "--force", "--quiet", "features")
    # the others read the backbone's embedding (or pyramids) whatever diffusion's condition
    others = [model for model in READ_BACKBONE if model != "diffusion"]
    assert changed(project) == {"verify", *stages_of(*others)}
    (project / FEATURES / "embedding.npy").unlink()
    write_params([], project / "params.yaml")
    dvc(project, "commit", "--force", "--quiet")


def test_the_translator_trains_after_its_imitator_and_the_gan_after_the_encoder(
    project: Path,
) -> None:
    imitator = project / "models" / "cond_gan" / "model.pt"
    imitator.write_text("new weights")  # train@cond_gan reran
    dvc(project, "commit", "--force", "--quiet", "train@cond_gan")
    # models.translator.reads.network is the Imitator's checkpoint
    assert changed(project) == {"evaluate@cond_gan", "train@translator"}
    (project / "models" / "encoder" / "model.pt").write_text("new weights")
    dvc(project, "commit", "--force", "--quiet", "train_encoder")
    # models.cond_gan.reads.network is the identity loss's encoder
    assert {"verify", "train@cond_gan"} <= changed(project)
    write_params([], project / "params.yaml")
    stand_in_outputs(project)
    dvc(project, "commit", "--force", "--quiet")


def test_a_family_added_to_the_pipeline_config_gets_its_stages(project: Path) -> None:
    write_params(["+model@models.second=diffusion"], project / "params.yaml")
    stages = dvc(project, "stage", "list", "--names-only").split()
    assert {"train@second", "evaluate@second"} <= set(stages)
    lock = {"train@second", "evaluate@second"} & changed(project)
    assert lock == {"train@second", "evaluate@second"}  # new: never run
    write_params([], project / "params.yaml")
