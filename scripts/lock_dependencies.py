"""Regenerate poetry.lock through the package index's simple (PEP 503/691) API.

Why: Poetry's built-in PyPI client reads the per-version JSON metadata API, which some
mirrors and proxies (including our development machines) do not serve, while the simple
index works everywhere pip works. So this script:

1. copies pyproject.toml into a temporary directory and adds a temporary "legacy" (simple
   index) source whose URL it asks pip for at run time (no index URL is written in the repo);
2. runs ``poetry lock`` there (starting from the current poetry.lock, so unchanged pins stay);
3. removes the ``[package.source]`` entries that name that temporary source, so the lock
   says "from PyPI" exactly as a plain ``poetry lock`` would;
4. recomputes the lock's content-hash for the real pyproject.toml with Poetry's own code and
   writes poetry.lock into the repository.

Usage: python scripts/lock_dependencies.py [--poetry PATH] [--index-url URL] [-- POETRY-LOCK-ARGS]
Poetry must be installed (in its own tool venv, never in the project's .venv), e.g.
``python3 -m venv ~/.local/poetry && ~/.local/poetry/bin/pip install poetry``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMP_SOURCE_NAME = "lock-simple-index"
# Where the README suggests installing Poetry (its own tool venv, outside the project).
POETRY_CANDIDATES = (Path.home() / ".local" / "poetry" / "bin" / "poetry",)


def find_poetry(explicit: str | None) -> Path:
    """Return the poetry executable: --poetry, $POETRY, PATH, or a known tool-venv location."""
    for candidate in (explicit, os.environ.get("POETRY"), shutil.which("poetry")):
        if candidate:
            return Path(candidate)
    for candidate_path in POETRY_CANDIDATES:
        if candidate_path.exists():
            return candidate_path
    sys.exit(
        "poetry not found. Install it into a tool venv outside the project, e.g.\n"
        "  python3 -m venv ~/.local/poetry && ~/.local/poetry/bin/pip install poetry\n"
        "then rerun, or pass --poetry PATH / set $POETRY."
    )


def simple_index_url() -> str:
    """The simple-index URL pip would use: its configured index-url, else its PyPI default."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith(".index-url") and not key.strip().endswith(".extra-index-url"):
            return value.strip().strip("'\"")
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    from pip._internal.models.index import PyPI

    return PyPI.simple_url


def poetry_python(poetry: Path) -> Path:
    """The interpreter of poetry's own venv (to use Poetry's code for the content-hash)."""
    first_line = poetry.read_text(errors="replace").splitlines()[0]
    if not first_line.startswith("#!"):
        sys.exit(f"cannot find the Python interpreter behind {poetry}")
    return Path(first_line[2:].strip().split()[0])


def add_temporary_source(pyproject_text: str, url: str) -> str:
    """Append a primary legacy source (which also turns off Poetry's implicit PyPI source)."""
    if "[[tool.poetry.source]]" in pyproject_text:
        sys.exit("pyproject.toml already declares [[tool.poetry.source]]; merge them by hand.")
    return (
        pyproject_text.rstrip("\n")
        + "\n\n[[tool.poetry.source]]\n"
        + f'name = "{TEMP_SOURCE_NAME}"\n'
        + f'url = "{url}"\n'
        + 'priority = "primary"\n'
    )


def strip_temporary_sources(lock_text: str, url: str) -> str:
    """Remove every [package.source] table that names the temporary source or its URL."""
    blocks = re.split(r"(?m)^(?=\[)", lock_text)
    kept = []
    for block in blocks:
        if block.startswith("[package.source]") and (
            TEMP_SOURCE_NAME in block or url.rstrip("/") in block
        ):
            continue
        kept.append(block)
    return "".join(kept)


CONTENT_HASH_CODE = """
import sys
from pathlib import Path
from poetry.factory import Factory
from poetry.packages.locker import Locker

repo = Path(sys.argv[1])
poetry = Factory().create_poetry(repo)
locker = Locker(repo / "poetry.lock", poetry.pyproject.data)
print(locker._get_content_hash())
"""


def real_content_hash(poetry: Path, project_dir: Path) -> str:
    """Content-hash of project_dir's pyproject.toml, computed by Poetry's own Locker."""
    result = subprocess.run(
        [str(poetry_python(poetry)), "-c", CONTENT_HASH_CODE, str(project_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poetry", help="path to the poetry executable")
    parser.add_argument("--index-url", help="simple index to resolve against (default: pip's)")
    parser.add_argument("poetry_args", nargs="*", help="extra arguments for `poetry lock`")
    args = parser.parse_args()

    poetry = find_poetry(args.poetry)
    url = (args.index_url or simple_index_url()).rstrip("/")
    lock_path = REPO_ROOT / "poetry.lock"

    with tempfile.TemporaryDirectory(prefix="face-generation-lock-") as temp:
        work = Path(temp)
        pyproject = (REPO_ROOT / "pyproject.toml").read_text()
        (work / "pyproject.toml").write_text(add_temporary_source(pyproject, url))
        # Poetry validates that the readme exists; the lock does not depend on its content.
        (work / "README.md").write_text("")
        (work / "face_generation").mkdir()
        (work / "face_generation" / "__init__.py").write_text("")
        if lock_path.exists():
            # Start from the current lock so that `poetry lock` keeps unchanged pins.
            text = lock_path.read_text()
            (work / "poetry.lock").write_text(text)

        print(f"resolving against the simple index given by pip, in {work}", flush=True)
        # Any venv Poetry makes for the throwaway project goes with the temp directory.
        env = {**os.environ, "POETRY_VIRTUALENVS_IN_PROJECT": "true"}
        subprocess.run(
            [str(poetry), "lock", "--no-interaction", *args.poetry_args],
            cwd=work,
            env=env,
            check=True,
        )
        lock_text = strip_temporary_sources((work / "poetry.lock").read_text(), url)

    if url in lock_text:
        sys.exit(f"the lock still names {url} after stripping sources; refusing to write it")
    content_hash = real_content_hash(poetry, REPO_ROOT)
    lock_text, count = re.subn(
        r'(?m)^content-hash = "[0-9a-f]+"$', f'content-hash = "{content_hash}"', lock_text
    )
    if count != 1:
        sys.exit("could not find the content-hash line in the generated lock")
    lock_path.write_text(lock_text)
    print(f"wrote {lock_path.relative_to(REPO_ROOT)} (content-hash {content_hash[:12]}…)")
    subprocess.run([str(poetry), "check", "--lock"], cwd=REPO_ROOT, check=True)


if __name__ == "__main__":
    main()
