"""The local MLflow tracking server: `python -m face_generation.tracking.server start|stop|status`.

One server per project: SQLite backend store and an artifact store under `mlruns/`, bound to
127.0.0.1 on the configured port, artifacts served through it (`--serve-artifacts`). A team's
server keeps its runs in PostgreSQL instead (`tracking.backend_store_uri=postgresql://...`) and
its artifacts in a shared folder or an object store (`tracking.artifacts=s3://...`). It runs
detached in its own process group with a pid file, so `stop` ends it and every process it
started (the uvicorn worker too). `start` reuses a healthy server already on the port.

The port (and host, or a shared server's `tracking.uri`) comes from params.yaml when it exists,
so these commands find the server the pipeline started (`config.tracking_source`); an override
on the command line wins. The pid file records the port with the pid, and `start` and `status`
act only on the server of that port: a server on another port is never waited for, blamed or
stopped. `stop` without `tracking.port=` stops every server this checkout started (each pid
file beside `tracking.pid_file`). A port held by another program is reported at once.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
from omegaconf import DictConfig, OmegaConf

from face_generation.errors import UserError

LOG_TAIL_LINES = 20  # how much of the server log a start failure shows
ML_WORKFLOW = "workflowType=machine_learning"  # the UI's query parameter for its training view

# The servers this process started: kept so that `stop_server` can reap them (no zombies).
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


class ServerError(RuntimeError):
    """The tracking server could not be started or stopped; the message says what to do."""


@dataclass(frozen=True)
class ServerStatus:
    uri: str
    healthy: bool
    pid: int | None  # from the pid file; None when this project started no server on this port
    running: bool  # the pid file's process group is alive
    log_file: Path

    def describe(self) -> str:
        if self.healthy:
            owner = f"pid {self.pid}" if self.running else "not started by this project"
            return f"MLflow server running at {self.uri} ({owner}); UI: {ui_url(self.uri)}"
        if self.running:
            return f"MLflow server (pid {self.pid}) is running but {self.uri} does not answer yet"
        return f"no MLflow server at {self.uri}"


def tracking_uri(cfg: DictConfig) -> str:
    """Where runs are logged: `tracking.uri` when set (a shared server), else the local one."""
    return str(cfg.uri) if cfg.get("uri") else f"http://{cfg.host}:{cfg.port}"


def ui_url(uri: str, page: str = "experiments") -> str:
    """A page of the MLflow UI (`experiments/1/runs/<id>`, `models/<name>`) in its
    machine-learning view: MLflow 3 opens the GenAI view (traces, no Model registry) otherwise."""
    return f"{uri.rstrip('/')}/#/{page}?{ML_WORKFLOW}"


def is_healthy(uri: str, timeout_s: float) -> bool:
    """True when an MLflow server answers OK on `<uri>/health`."""
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s)
    except requests.RequestException:
        return False
    return response.status_code == 200 and response.text.strip() == "OK"


def wait_until_healthy(
    uri: str,
    timeout_s: float,
    poll_s: float,
    probe_timeout_s: float,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """Poll `<uri>/health` until it answers OK (True) or `timeout_s` passes (False).

    `alive`, when given, is asked between probes; waiting stops early (False) once it says the
    server process is gone, so a server that crashed at start is reported at once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if is_healthy(uri, probe_timeout_s):
            return True
        if time.monotonic() >= deadline or (alive is not None and not alive()):
            return False
        time.sleep(poll_s)


def server_status(cfg: DictConfig) -> ServerStatus:
    pid = _read_pid(Path(cfg.pid_file), int(cfg.port))
    return ServerStatus(
        uri=tracking_uri(cfg),
        healthy=is_healthy(tracking_uri(cfg), cfg.health_timeout_s),
        pid=pid,
        running=pid is not None and bool(_group_members(pid)),
        log_file=Path(cfg.log_file),
    )


def start_server(cfg: DictConfig, wait: bool = True) -> str:
    """Start the project's MLflow server unless one already answers; return its tracking URI.

    With `wait=False` it returns as soon as the server process is launched: the run logger
    spools records until the server answers, so training need not wait for a cold start.
    """
    uri = tracking_uri(cfg)
    if is_healthy(uri, cfg.health_timeout_s):
        return uri
    if cfg.get("uri"):
        raise ServerError(
            f"the MLflow server at tracking.uri={uri} does not answer on /health; start it, "
            "or set tracking.uri=null to use the local server this project starts"
        )
    pid_file, log_file = Path(cfg.pid_file), Path(cfg.log_file)
    pid = _read_pid(pid_file, int(cfg.port))
    if pid is not None and _group_members(pid):
        # Ours, still starting up (or wedged): wait for it rather than start a second one.
        if not wait or _wait_for(cfg, pid):
            return uri
        raise ServerError(
            f"the MLflow server (pid {pid}) did not answer at {uri} within "
            f"{cfg.start_timeout_s} s; see {log_file}, then "
            "`python -m face_generation.tracking.server stop` and start it again"
        )
    if _port_taken(str(cfg.host), int(cfg.port), cfg.health_timeout_s):
        raise ServerError(
            f"port {cfg.port} on {cfg.host} is in use by another program (not an MLflow server); "
            "stop that program or choose another port with tracking.port=PORT"
        )
    other = _read_record(pid_file)
    if other is not None and _group_members(other[0]):
        raise ServerError(
            f"{pid_file} is the pid file of the MLflow server (pid {other[0]}) on another port; "
            f"give the server on port {cfg.port} its own with tracking.pid_file=PATH"
        )
    pid_file.unlink(missing_ok=True)  # stale: its process group is gone

    process = _launch(cfg)
    if not wait or _wait_for(cfg, process.pid):
        return uri
    tail = _tail(log_file)
    _terminate_group(process.pid, cfg.stop_timeout_s, cfg.health_poll_s)
    pid_file.unlink(missing_ok=True)
    raise ServerError(
        f"the MLflow server did not come up at {uri} within {cfg.start_timeout_s} s "
        f"(raise tracking.start_timeout_s if the machine is just slow); its log is {log_file}:\n"
        f"{tail}"
    )


def stop_server(cfg: DictConfig) -> bool:
    """Stop the server this project started on `tracking.port` (its whole process group);
    False if none ran there. A pid file of another port's server is left alone."""
    pid_file = Path(cfg.pid_file)
    pid = _read_pid(pid_file, int(cfg.port))
    if pid is None:
        return False
    if not _group_members(pid):
        pid_file.unlink(missing_ok=True)  # stale: its process group is gone
        return False
    _terminate_group(pid, cfg.stop_timeout_s, cfg.health_poll_s)
    pid_file.unlink(missing_ok=True)
    return True


def started_servers(cfg: DictConfig) -> list[DictConfig]:
    """The tracking settings of each server this checkout started that still runs: every pid
    file in `tracking.pid_file`'s folder (one per port) whose process group lives."""
    servers = []
    for pid_file in sorted(Path(cfg.pid_file).parent.glob("*.pid")):
        record = _read_record(pid_file)
        if record is not None and record[1] is not None and _group_members(record[0]):
            server = OmegaConf.merge(cfg, {"port": record[1], "pid_file": str(pid_file)})
            assert isinstance(server, DictConfig)
            servers.append(server)
    return servers


def use_tracking_server(cfg: DictConfig) -> str:
    """Make MLflow resolve `models:/` and `runs:/` URIs in this process against the server of
    `cfg` (MLFLOW_TRACKING_URI), whatever the environment said; its URI."""
    uri = tracking_uri(cfg)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def use_registry_server(cfg: DictConfig) -> str:
    """`use_tracking_server` for a command about to resolve `models:/` or `runs:/` URIs: a
    server that does not answer is one line at once, where MLflow would retry for minutes."""
    uri = use_tracking_server(cfg)
    if not is_healthy(uri, cfg.health_timeout_s):
        raise UserError(
            f"no MLflow server answers at {uri}, where models:/ and runs:/ URIs are resolved: "
            "start it (python -m face_generation.tracking.server start), or name yours with "
            "tracking.port=PORT or tracking.uri=URI"
        )
    return uri


def use_pipeline_server(command: str) -> None:
    """For a command without tracking settings of its own (inference): MLflow model URIs resolve
    against params.yaml's server, else MLFLOW_TRACKING_URI, and it says which; with neither,
    nothing (the loader then asks for one instead of guessing port 5000)."""
    from face_generation.config import compose, tracking_source

    overrides, source = tracking_source()
    if source is not None:
        uri = use_registry_server(compose("config", overrides).tracking)
        print(f"[{command}] MLflow model URIs resolve against {uri} ({source})")


def backend_store_uri(cfg: DictConfig) -> str:
    """The server's run database: `tracking.backend_store_uri` when set (PostgreSQL for a team),
    else the SQLite file `tracking.backend_store`."""
    if cfg.get("backend_store_uri"):
        return str(cfg.backend_store_uri)
    return f"sqlite:///{Path(cfg.backend_store).resolve()}"


def artifacts_destination(cfg: DictConfig) -> str:
    """Where the server stores artifacts: an object store URI (`s3://bucket/path`) as given, or
    a folder, made absolute."""
    artifacts = str(cfg.artifacts)
    return artifacts if "://" in artifacts else str(Path(artifacts).resolve())


def without_password(text: str) -> str:
    """`text` with the password of any `scheme://user:password@host` URI in it masked."""
    return re.sub(r"(://[^/:@\s]+:)[^@\s]+@", r"\1***@", text)


def _launch(cfg: DictConfig) -> subprocess.Popen[bytes]:
    backend_uri, artifacts = backend_store_uri(cfg), artifacts_destination(cfg)
    pid_file, log_file = Path(cfg.pid_file).resolve(), Path(cfg.log_file).resolve()
    folders = [pid_file.parent, log_file.parent]
    if backend_uri.startswith("sqlite:///"):
        folders.append(Path(backend_uri.removeprefix("sqlite:///")).parent)
    if "://" not in artifacts:
        folders.append(Path(artifacts))
    for directory in folders:
        directory.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        str(cfg.host),
        "--port",
        str(cfg.port),
        "--workers",
        str(cfg.workers),
    ]
    if not cfg.access_log:
        command += ["--uvicorn-opts", "--no-access-log"]
    env = {**os.environ, **{str(k): str(v) for k, v in cfg.server_env.items()}}
    with log_file.open("ab") as log:
        started = f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n"
        log.write(without_password(started).encode())
        log.flush()
        # Its own session and process group: it outlives this process and is stopped as a group.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=log_file.parent,
            env=env,
            start_new_session=True,
        )
    _STARTED[process.pid] = process
    pid_file.write_text(f"{process.pid} {cfg.port}\n")  # read by _read_record
    return process


def _wait_for(cfg: DictConfig, pid: int) -> bool:
    return wait_until_healthy(
        tracking_uri(cfg),
        cfg.start_timeout_s,
        cfg.health_poll_s,
        cfg.health_timeout_s,
        alive=lambda: bool(_group_members(pid)),
    )


def _read_record(pid_file: Path) -> tuple[int, int | None] | None:
    """(pid, port) from the pid file; the port is None in a file that does not record it."""
    try:
        fields = [int(field) for field in pid_file.read_text().split()]
    except (FileNotFoundError, ValueError):
        return None
    return (fields[0], fields[1] if len(fields) > 1 else None) if fields else None


def _read_pid(pid_file: Path, port: int) -> int | None:
    """The pid in the pid file when it is the server started on `port`, else None."""
    record = _read_record(pid_file)
    return record[0] if record is not None and record[1] == port else None


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    _reap(pgid)
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs (macOS): ask the kernel whether the group exists
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _reap(pid: int) -> None:
    """Collect the exit status of a server this process started, so it leaves no zombie."""
    process = _STARTED.get(pid)
    if process is not None and process.poll() is not None:
        del _STARTED[process.pid]


def _terminate_group(pgid: int, timeout_s: float, poll_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _group_members(pgid):
                return
            time.sleep(poll_s)
    if _group_members(pgid):
        raise ServerError(f"could not stop process group {pgid}; kill it by hand: kill -9 -{pgid}")


def _port_taken(host: str, port: int, timeout_s: float) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        return sock.connect_ex((host, port)) == 0


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    from face_generation.config import config_from_args, stage_parser
    from face_generation.errors import reported_errors

    parser = argparse.ArgumentParser(
        prog="python -m face_generation.tracking.server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="start|stop|status")
    helps = {
        "start": "start the server (or reuse the one running) and print the UI URL",
        "stop": "stop the server this project started, with every process it started",
        "status": "say whether the server runs and where",
    }
    for name, text in helps.items():
        shared = stage_parser(text)  # --params FILE and Hydra overrides, as every stage takes
        actions.add_parser(
            name,
            parents=[shared],
            conflict_handler="resolve",
            help=text,
            description=text,
            epilog=(
                "Configuration comes from configs/tracking/ (Hydra). Examples:\n"
                "  %(prog)s tracking.port=5001\n"
                "  %(prog)s --params params.yaml       (as `dvc repro` runs)"
            ),
            formatter_class=shared.formatter_class,
        )
    args = parser.parse_args(argv)
    with reported_errors("tracking"):
        cfg = config_from_args(args).tracking
    if args.action == "start":
        started = time.perf_counter()
        try:
            uri = start_server(cfg)
        except ServerError as error:
            raise SystemExit(f"[tracking] {error}") from None
        print(f"[tracking] MLflow server ready in {time.perf_counter() - started:.1f} s")
        print(f"[tracking] UI: {ui_url(uri)}")
    elif args.action == "stop" and not any(o.startswith("tracking.port=") for o in args.overrides):
        # No port asked for: every server this checkout started, whatever port it took.
        for server in started_servers(cfg) or [cfg]:
            stop_one(server)
    elif args.action == "stop":
        stop_one(cfg)
    else:
        status = server_status(cfg)
        print(f"[tracking] {status.describe()}")
        print(f"[tracking] log: {status.log_file}")
        if not status.healthy:
            raise SystemExit(1)


def stop_one(cfg: DictConfig) -> None:
    """`stop` for the server of one port, saying what it did."""
    stopped = stop_server(cfg)
    status = server_status(cfg)
    if stopped:
        print(f"[tracking] MLflow server at {status.uri} stopped")
    elif status.healthy:
        print(
            f"[tracking] the server at {status.uri} was not started by this project "
            f"(no live process for port {cfg.port} in {cfg.pid_file}); stop it where it "
            "was started"
        )
    elif _port_taken(str(cfg.host), int(cfg.port), cfg.health_timeout_s):
        print(
            f"[tracking] port {cfg.port} is held by another program, not an MLflow server "
            "this project started; nothing stopped"
        )
    else:
        print(f"[tracking] no MLflow server was running at {status.uri}")


if __name__ == "__main__":
    main()
