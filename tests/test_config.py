"""The config tree composes, params.yaml is what it composes to, and every stage explains itself."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from face_generation.config import CONFIG_DIR, compose, load_params, stage_parser
from face_generation.errors import UserError
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


# Typed schemas (face_generation/config_schema.py). ----------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=abc", r"^train\.steps: Value 'abc' of type 'str' could not be converted to Integer$"),
        ("train.stepz=5", r"^train\.stepz is not a setting of train \(did you mean steps\?\)$"),
        ("+train.stepz=5", r"^train\.stepz is not a setting of train \(did you mean steps\?\)$"),
        ("data.resolution=big", r"^data\.resolution: Value 'big' .* converted to Integer$"),
        ("model.latent_dimm=8", r"^model\.latent_dimm is not a setting of model \(did you mean latent_dim\?\)$"),
        ("model.optimizer.lr=fast", r"^model\.optimizer\.lr: Value 'fast' .* converted to Float$"),
        ("tracking.port=http", r"^tracking\.port: Value 'http' .* converted to Integer$"),
        ("seed=abc", r"^train\.seed: .*'abc' .* converted to Integer$"),  # train.seed is ${seed}
        ("model=nonexistent", r"Could not find 'model/nonexistent'; the options are cond_gan, dcgan, .*vae$"),
        # every group is typed: the feature networks by their file, the features stage, the face encoder
        ("backbone.image_sise=3", r"^backbone\.image_sise is not a setting of backbone \(did you mean image_size\?\)$"),
        ("encoder=facenet encoder.image_size=big", r"^encoder\.image_size: Value 'big' .* converted to Integer$"),
        ("features.verification.far=low", r"^features\.verification\.far: Value 'low' .* converted to Float$"),
        ("model=encoder model.hidden_dim=wide", r"^model\.hidden_dim: Value 'wide' .* converted to Integer$"),
    ],
)  # fmt: skip
def test_a_wrong_type_or_unknown_key_fails_at_composition_in_one_line(
    override: str, message: str
) -> None:
    with pytest.raises(UserError, match=message) as failure:
        compose("config", override.split())
    assert "\n" not in str(failure.value)


def test_params_files_are_checked_against_the_same_schemas(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    text = (REPO_ROOT / "params.yaml").read_text()
    params.write_text(re.sub(r"^  steps: \d+$", "  steps: lots", text, count=1, flags=re.M))
    with pytest.raises(UserError, match=r"params\.yaml: train\.steps: Value 'lots'"):
        load_params(params)
    with pytest.raises(UserError, match=r"models\.vae\.beta: Value 'high'"):
        load_params(REPO_ROOT / "params.yaml", ["models.vae.beta=high"])
    with pytest.raises(UserError, match=r"feature_models\.encoder\.train\.steps: Value 'few'"):
        load_params(REPO_ROOT / "params.yaml", ["feature_models.encoder.train.steps=few"])
    with pytest.raises(UserError, match=r"trian is not a setting \(did you mean train\?\)"):
        load_params(REPO_ROOT / "params.yaml", ["trian.steps=5"])
    selected = load_params(REPO_ROOT / "params.yaml", ["model.beta=2"], model="vae")
    assert selected.model.beta == 2.0 and "models" not in selected  # typed: 2 is a float


def test_model_configs_stay_open_to_families_without_a_schema() -> None:
    tiny = compose("config", ["model=tiny", "model.latent_dim=5"])  # tests/tiny_family.py
    assert tiny.model.name == "tiny" and tiny.model.latent_dim == 5
    with pytest.raises(UserError, match=r"model\.latent_dimm is not a setting"):
        compose("config", ["model=tiny", "model.latent_dimm=5"])  # still closed to typos


def test_dvc_composes_the_same_params_yaml_without_importing_the_package(tmp_path: Path) -> None:
    """`dvc exp run -S` composes params.yaml in DVC's process, where no schema is registered:
    the configs name their schemas as optional, so it composes the same config."""
    composed = tmp_path / "params.yaml"
    script = (
        "import sys; from dvc.utils.hydra import compose_and_dump; "
        "compose_and_dump(sys.argv[1], sys.argv[2], None, 'pipeline', sys.argv[3], [])"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(composed), str(CONFIG_DIR.resolve()), str(tmp_path)],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert PARAMS_HEADER + composed.read_text() == (REPO_ROOT / "params.yaml").read_text()


# Hydra's command-line flags: --cfg job, -m. ---------------------------------------------------


STAGE_MAINS = {
    "fetch": "face_generation.data.fetch",
    "download": "face_generation.data.download",
    "split": "face_generation.data.split",
    "crop": "face_generation.data.crop",
    "pack": "face_generation.data.pack",
    "train": "face_generation.train",
    "evaluate": "face_generation.evaluate",
    "report": "face_generation.evaluation.report",
    "sync": "face_generation.tracking.sync",
}


@pytest.mark.parametrize("stage", sorted(STAGE_MAINS))
def test_cfg_job_prints_the_stage_config_and_runs_nothing(
    stage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = importlib.import_module(STAGE_MAINS[stage]).main
    with pytest.raises(SystemExit) as done:
        main(["--cfg", "job", f"paths.data={tmp_path}", "train.steps=7"])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    printed = OmegaConf.create(out)
    assert printed.train.steps == 7 and printed.paths.data == str(tmp_path)
    assert "  seed: ${seed}\n" in out  # unresolved, as Hydra prints it; --resolve resolves
    assert list(tmp_path.iterdir()) == []


def test_cfg_job_prints_one_model_of_params_yaml_as_dvc_runs_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from face_generation.train import main

    with pytest.raises(SystemExit):
        main(["--params", str(REPO_ROOT / "params.yaml"), "--model", "dcgan", "--cfg", "job"])
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.model.name == "dcgan" and "models" not in printed


def test_the_pipeline_and_the_server_take_cfg_job_too(capsys: pytest.CaptureFixture[str]) -> None:
    from face_generation.pipeline import main as pipeline
    from face_generation.tracking.server import main as server

    with pytest.raises(SystemExit):
        pipeline(["--cfg", "job", "--resolve", "train.steps=9"])
    out = capsys.readouterr().out
    assert (
        set(OmegaConf.create(out).models)
        == {"vae", "dcgan", "diffusion", "progressive", "cond_gan", "translator"}
        and "  seed: 0\n" in out
    )
    with pytest.raises(SystemExit):
        server(["status", "--cfg", "job", "tracking.port=5999"])
    assert OmegaConf.create(capsys.readouterr().out).tracking.port == 5999


@pytest.mark.parametrize("arguments", [["-m", "train.steps=1000,2000"], ["train.steps=1000,2000"]])
def test_sweeps_are_refused_with_the_dvc_command_that_runs_them(arguments: list[str]) -> None:
    from face_generation.train import main

    with pytest.raises(SystemExit, match=r"^\[train\] error: .*dvc exp run --queue -S") as failure:
        main(arguments)
    assert "\n" not in str(failure.value)


def test_help_says_where_sweeps_go() -> None:
    help_text = stage_parser("a stage").format_help()
    assert "--cfg" in help_text and "dvc exp run --queue -S" in help_text
