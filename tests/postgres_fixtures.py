"""A real PostgreSQL server, and an MLflow server whose runs live in it (a team's setup).

Imported by tests/conftest.py. `postgres` starts Debian's PostgreSQL (`initdb`, `pg_ctl`) once
per session in a temporary data folder, listening on a free port on 127.0.0.1 only, and
`postgres_mlflow_server` starts the project's MLflow server against it
(`tracking.backend_store_uri=postgresql://...`). Where PostgreSQL is not installed, every test
that uses them is skipped with the reason (`.ci/run` installs it, so CI runs them).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from face_generation.config import compose
from face_generation.tracking.server import start_server, stop_server
from tests.tracking_fixtures import MlflowServer, free_port, server_overrides

# Debian's package keeps the server programs off PATH, under one folder per major version.
DEBIAN_BIN_DIRS = "/usr/lib/postgresql/*/bin"
# PostgreSQL refuses to run as root: as root, the tests run it as the account Debian's package made.
POSTGRES_ACCOUNT = "postgres"
DATABASE = "mlflow"
START_TIMEOUT_S = 60  # pg_ctl -w waits for the server to accept connections at most this long


def postgres_bin_dir() -> Path | None:
    """The folder of `initdb` and `pg_ctl`: on PATH, else Debian's newest version; None when absent."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        return Path(on_path).resolve().parent
    installed = sorted(Path("/").glob(DEBIAN_BIN_DIRS.lstrip("/")), key=lambda p: p.parent.name)
    return next((path for path in reversed(installed) if (path / "initdb").is_file()), None)


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """The URI of an empty database on a PostgreSQL server started for this session."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin); "
            "install Debian's postgresql package (.ci/run does)"
        )
    # Not pytest's tmp folder: it is private to the user running the tests, and as root the
    # server runs as another account that must own its data folder.
    root = Path(tempfile.mkdtemp(prefix="face-generation-postgres-"))
    as_account: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam(POSTGRES_ACCOUNT)
        os.chown(root, account.pw_uid, account.pw_gid)
        as_account = ["runuser", "-u", POSTGRES_ACCOUNT, "--"]
    data, port = root / "data", free_port()

    def run(program: str, *args: str) -> None:
        subprocess.run(
            [*as_account, str(bin_dir / program), *args], check=True, capture_output=True
        )

    run("initdb", "-D", str(data), "-U", DATABASE, "--auth=trust", "--encoding=UTF8", "--no-sync")
    server_options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    log = str(root / "postgres.log")
    run(
        "pg_ctl",
        "-D",
        str(data),
        "-l",
        log,
        "-o",
        server_options,
        "-w",
        "-t",
        str(START_TIMEOUT_S),
        "start",
    )
    try:
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", DATABASE, DATABASE)
        yield f"postgresql://{DATABASE}@127.0.0.1:{port}/{DATABASE}"
    finally:
        run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_mlflow_server(
    postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """The project's MLflow server with its runs in `postgres` (artifacts in a folder)."""
    root = tmp_path_factory.mktemp("mlflow_postgres")
    overrides = [*server_overrides(root, free_port()), f"tracking.backend_store_uri={postgres}"]
    cfg = compose("config", overrides).tracking
    uri = start_server(cfg)
    yield MlflowServer(uri=uri, cfg=cfg, overrides=overrides, root=root)
    stop_server(cfg)
