"""Create or update the project venv (.venv) with exactly the versions pinned in poetry.lock.

Needs only Python 3.11+ with pip and venv; Poetry is not required. Steps:

1. create .venv with ``python3 -m venv`` if it is missing (or broken);
2. pick the lock's packages for the requested groups whose markers hold for the venv's
   interpreter, and install them with pip in hash-checking mode, without dependency
   resolution (the lock already is the resolution);
3. uninstall whatever else is in the venv (unless --keep-extra), install the project itself
   editable without deps, check the result with ``pip check`` and compile all bytecode
   (imports of torch and mlflow are several seconds slower without .pyc files);
4. write a stamp keyed on poetry.lock, pyproject.toml and this script: when none changed,
   the next run returns at once.

Usage: python3 scripts/install.py [--venv .venv] [--groups main,dev] [--force] [--keep-extra]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    sys.exit(
        "scripts/install.py needs Python 3.11 or 3.12: run it as PYTHON=python3.11 make install"
    )

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK_PATH = REPO_ROOT / "poetry.lock"
PYPROJECT_PATH = REPO_ROOT / "pyproject.toml"
STAMP_NAME = ".face-generation-install-stamp"
# Kept in the venv even though the lock does not name them.
ALWAYS_KEEP = {"pip"}

Package = dict[str, Any]


def normalize(name: str) -> str:
    """PEP 503 name normalisation (how poetry.lock spells names)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def stamp_key(groups: list[str]) -> str:
    digest = hashlib.sha256()
    for path in (LOCK_PATH, PYPROJECT_PATH, Path(__file__).resolve()):
        digest.update(path.read_bytes())
    # The editable install points at this checkout: a moved checkout needs a new install.
    digest.update(f"{REPO_ROOT}|{','.join(groups)}".encode())
    return digest.hexdigest()


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_works(venv: Path) -> bool:
    python = venv_python(venv)
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import pip"], capture_output=True, check=False)
    return probe.returncode == 0


STARTED = time.monotonic()


def step(message: str) -> None:
    print(f"[install {time.monotonic() - STARTED:5.0f} s] {message}", flush=True)


# ---------------------------------------------------------------- outside the venv


def outer_main(args: argparse.Namespace) -> None:
    if not LOCK_PATH.exists():
        sys.exit(f"{LOCK_PATH} is missing: run `make lock` (scripts/lock_dependencies.py).")
    if Path(args.venv).is_symlink() and venv_works(Path(args.venv)) and not args.force:
        # Another checkout's venv (a worktree, the README test's copy): installing here would
        # point its editable install at this checkout; its own checkout keeps it up to date.
        step(f"{args.venv} is a link to {Path(args.venv).resolve()}: left as it is")
        return
    venv = Path(args.venv).resolve()
    groups = [group.strip() for group in args.groups.split(",") if group.strip()]
    key = stamp_key(groups)
    stamp = venv / STAMP_NAME

    if not args.force and venv_works(venv) and stamp.exists() and stamp.read_text() == key:
        step(f"{venv.name} is up to date with poetry.lock")
        return

    if venv.exists() and not venv_works(venv):
        step(f"{venv} is broken (no working python with pip); recreating it")
        shutil.rmtree(venv)
    if not venv.exists():
        step(f"creating {venv} with {args.python}")
        created = subprocess.run([args.python, "-m", "venv", str(venv)], check=False)
        if created.returncode != 0:
            sys.exit(
                f"`{args.python} -m venv {venv}` failed. On Debian/Ubuntu install the venv module "
                "first (apt-get install python3-venv), or pass --python PATH to a Python 3.11/3.12."
            )

    stamp.unlink(missing_ok=True)
    inner = [str(venv_python(venv)), str(Path(__file__).resolve()), "--inside-venv"]
    inner += ["--groups", ",".join(groups)]
    if args.keep_extra:
        inner.append("--keep-extra")
    result = subprocess.run(inner, check=False)
    if result.returncode != 0:
        sys.exit(result.returncode)
    stamp.write_text(key)


# ---------------------------------------------------------------- inside the venv


@functools.cache
def packaging() -> tuple[Any, Any, Any]:
    """pip's vendored packaging (Marker, SpecifierSet, Version): the rules pip itself applies."""
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.version import Version

    return Marker, SpecifierSet, Version


def marker_holds(marker: str | None, extras: Iterable[str] = ()) -> bool:
    """Evaluate a PEP 508 marker for this interpreter; `extra ==` holds for any given extra."""
    if not marker:
        return True
    marker_class, _, _ = packaging()
    parsed = marker_class(marker)
    return any(parsed.evaluate({"extra": extra}) for extra in (*extras, ""))


def constraint_allows(constraint: str, version: str) -> bool:
    """Does a poetry.lock constraint ('>=1,<2', '*', '1.2.3', 'a || b') allow version?"""
    _, specifier_set, version_class = packaging()
    for alternative in constraint.split("||"):
        alternative = alternative.strip()
        if alternative in ("*", ""):
            return True
        parts = [part.strip() for part in alternative.split(",")]
        spec = ",".join(part if part[0] in "<>=!~" else f"=={part}" for part in parts)
        if specifier_set(spec).contains(version_class(version), prereleases=True):
            return True
    return False


def package_needed(package: Package, groups: list[str]) -> bool:
    """Is the package in one of the groups, with its lock marker true here?"""
    markers = package.get("markers")
    for group in package.get("groups", ["main"]):
        if group not in groups:
            continue
        marker = markers.get(group) if isinstance(markers, dict) else markers
        if marker_holds(marker):
            return True
    return False


def dependency_entries(package: Package) -> Iterable[tuple[str, dict[str, Any]]]:
    for name, spec in package.get("dependencies", {}).items():
        for entry in spec if isinstance(spec, list) else [spec]:
            yield normalize(name), ({"version": entry} if isinstance(entry, str) else entry)


def dependency_active(
    package: Package, dependency: str, entry: dict[str, Any], requested: set[str]
) -> bool:
    """Does package need this dependency here, given the extras requested of it?"""
    if not marker_holds(entry.get("markers"), requested):
        return False
    if not entry.get("optional"):
        return True
    # An optional dependency counts only when a requested extra of the package lists it.
    for extra in requested:
        for item in package.get("extras", {}).get(extra, []):
            if normalize(re.split(r"[\s(;\[<>=!~]", item, maxsplit=1)[0]) == dependency:
                return True
    return False


def select_packages(lock: dict[str, Any], groups: list[str]) -> dict[str, Package]:
    """One locked package per name for this interpreter.

    Poetry may lock two versions of a name under markers it cannot prove disjoint (e.g.
    `platform_system` vs `sys_platform`); `poetry install` re-solves among them, and so does
    this: keep the candidate that every other selected package's dependency (with the extras
    requested of that package) allows.
    """
    candidates: dict[str, list[Package]] = {}
    for package in lock["package"]:
        if package_needed(package, groups):
            candidates.setdefault(normalize(package["name"]), []).append(package)

    chosen = {name: found[0] for name, found in candidates.items() if len(found) == 1}
    undecided = {name: found for name, found in candidates.items() if len(found) > 1}
    while undecided:
        extras: dict[str, set[str]] = {}
        constraints: dict[str, list[str]] = {}
        for package in chosen.values():
            for dependency, entry in dependency_entries(package):
                if "extras" in entry:
                    extras.setdefault(dependency, set()).update(entry["extras"])
        for name, package in chosen.items():
            for dependency, entry in dependency_entries(package):
                if dependency_active(package, dependency, entry, extras.get(name, set())):
                    constraints.setdefault(dependency, []).append(entry["version"])
        progress = False
        for name, found in list(undecided.items()):
            allowed = [
                package
                for package in found
                if all(constraint_allows(c, package["version"]) for c in constraints.get(name, []))
            ]
            if len(allowed) == 1:
                chosen[name] = allowed[0]
                del undecided[name]
                progress = True
        if not progress:
            versions = {name: [p["version"] for p in found] for name, found in undecided.items()}
            sys.exit(f"poetry.lock leaves several versions possible here: {versions}")
    return chosen


def requirements_text(packages: dict[str, Package]) -> str:
    lines = []
    for name, package in sorted(packages.items()):
        hashes = [file["hash"] for file in package.get("files", []) if file.get("hash")]
        if not hashes:
            sys.exit(f"poetry.lock has no file hashes for {name}; regenerate it with `make lock`.")
        line = f"{name}=={package['version']}"
        line += "".join(f" \\\n    --hash={file_hash}" for file_hash in hashes)
        lines.append(line)
    return "\n".join(lines) + "\n"


def pip(*arguments: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *arguments]
    if subprocess.run(command, check=False).returncode != 0:
        sys.exit(f"failed: {' '.join(command)}")


def installed_names() -> set[str]:
    from importlib.metadata import distributions

    return {normalize(dist.metadata["Name"]) for dist in distributions() if dist.metadata["Name"]}


def inner_main(args: argparse.Namespace) -> None:
    groups = [group.strip() for group in args.groups.split(",") if group.strip()]
    lock = tomllib.loads(LOCK_PATH.read_text())
    project = tomllib.loads(PYPROJECT_PATH.read_text())["project"]
    project_name = normalize(project["name"])
    _, specifier_set, _ = packaging()
    running = ".".join(map(str, sys.version_info[:3]))
    if not specifier_set(project.get("requires-python", "")).contains(running):
        sys.exit(
            f"{sys.prefix} runs Python {running}, but the project requires Python "
            f"{project['requires-python']}: rerun with --python PATH (a matching interpreter) "
            "after deleting that venv."
        )
    packages = select_packages(lock, groups)

    step(f"installing {len(packages)} locked packages (groups: {', '.join(groups)})")
    with tempfile.TemporaryDirectory(prefix="face-generation-install-") as temp:
        requirements = Path(temp) / "requirements.txt"
        requirements.write_text(requirements_text(packages))
        pip("install", "--require-hashes", "--no-deps", "--compile", "-r", str(requirements))

    if not args.keep_extra:
        extra = sorted(installed_names() - set(packages) - ALWAYS_KEEP - {project_name})
        if extra:
            step(f"removing packages that poetry.lock does not name: {', '.join(extra)}")
            pip("uninstall", "--yes", *extra)

    step("installing the project itself (editable, no dependencies)")
    pip("install", "--no-deps", "--compile", "--editable", str(REPO_ROOT))

    step("checking installed requirements (pip check)")
    pip("check")

    step("compiling bytecode in site-packages")
    site_dirs = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    # Some packages ship deliberately invalid .py files (templates, test data): ignore those.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-qq", "-j0", *site_dirs],
        check=False,
    )
    step("done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=str(REPO_ROOT / ".venv"), help="venv directory")
    parser.add_argument("--groups", default="main,dev", help="poetry groups to install")
    parser.add_argument("--python", default=sys.executable, help="interpreter for a new venv")
    parser.add_argument("--force", action="store_true", help="ignore the up-to-date stamp")
    parser.add_argument(
        "--keep-extra", action="store_true", help="keep packages that poetry.lock does not name"
    )
    parser.add_argument("--inside-venv", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside_venv:
        inner_main(args)
    else:
        outer_main(args)


if __name__ == "__main__":
    main()
