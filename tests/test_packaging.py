"""The wheel: it holds the config tree and the licence, and an installed copy composes its
config outside the repository (no `configs/` beside it)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from face_generation.config import CONFIG_DIR
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

# What the installed copy prints: where it was imported from, then params.yaml's content.
COMPOSE = (
    "import face_generation, sys; from omegaconf import OmegaConf; "
    "from face_generation.config import compose; "
    "print(face_generation.__file__); "
    "sys.stdout.write(OmegaConf.to_yaml(compose('pipeline'), resolve=True))"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel .` as the README's packaging section runs it (poetry-core builds it)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPO_ROOT), "-w", str(out)],
        check=True,
        timeout=600,
    )
    [built] = out.glob("face_generation-*.whl")
    return built


def test_the_wheel_holds_every_config_and_the_licence(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"face_generation/configs/{path.relative_to(CONFIG_DIR).as_posix()}"
        for path in CONFIG_DIR.rglob("*.yaml")
    }
    assert configs and configs <= names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_an_installed_copy_composes_the_pipeline_config(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what installing a pure-Python wheel does
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("FACE_GENERATION_CONFIGS", None)
    result = subprocess.run(
        [sys.executable, "-c", COMPOSE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    imported_from, composed = result.stdout.split("\n", 1)
    assert Path(imported_from).is_relative_to(site)
    params = (REPO_ROOT / "params.yaml").read_text()
    assert composed == params.split("\n", 1)[1]  # params.yaml without its header line


def test_make_install_leaves_a_venv_linked_from_another_checkout_alone(tmp_path: Path) -> None:
    """The README test's project copy links .venv to this one: installing there would point
    this venv's editable install at the temporary copy."""
    link = tmp_path / ".venv"
    link.symlink_to(Path(sys.prefix))
    stamp = Path(sys.prefix) / ".face-generation-install-stamp"
    before = stamp.read_bytes() if stamp.exists() else None
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "install.py"), "--venv", str(link)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"{link} is a link to {Path(sys.prefix).resolve()}: left as it is" in result.stdout
    assert (stamp.read_bytes() if stamp.exists() else None) == before
