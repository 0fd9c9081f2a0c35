"""A copy of the project as a fresh clone has it (tracked and untracked-but-not-ignored files,
symbolic links kept as links), for the tests that run the real `dvc` CLI in it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [
        name for name in listed if (REPO_ROOT / name).is_file() or (REPO_ROOT / name).is_symlink()
    ]


def copy_project(destination: Path) -> Path:
    """Every project file under `destination`; configs/ stays a link to face_generation/configs."""
    for name in project_files():
        source, target = REPO_ROOT / name, destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(source.readlink())
        else:
            shutil.copy2(source, target)
    return destination
