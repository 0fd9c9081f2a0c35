"""Serve trained generators over HTTP, with a web page: `python -m face_generation.serve`.

Loads every models/<name>/model.pt (or the models named in serve.models: checkpoints or MLflow
model URIs such as models:/face_generation-vae/1, resolved against the tracking server of
params.yaml, as every command finds it, and printed), listens on serve.host:serve.port
(127.0.0.1:8000), prints the page's URL and serves until Ctrl-C. The API's documentation is
at /docs. Settings live in configs/serve/default.yaml.

Examples:
  python -m face_generation.serve
  python -m face_generation.serve serve.port=8080
  python -m face_generation.serve +serve.models.vae=models:/face_generation-vae/1
  python -m face_generation.serve serve.host=0.0.0.0      (every interface: a deliberate choice)
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from collections.abc import Sequence

from face_generation.config import compose, tracking_source
from face_generation.runtime.checkpoint import CheckpointError
from face_generation.runtime.sources import REGISTRY_SCHEMES


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A socket listening on host:port (port 0: any free one). Connections that arrive before
    the server runs wait in the backlog, so the URL is printed only once it is reachable."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


def url(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m face_generation.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides such as serve.port=8080"
    )
    args = parser.parse_args(argv)
    tracking, source = tracking_source()  # params.yaml's tracking.port, as every command
    cfg = compose("config", [*tracking, *args.overrides])

    import uvicorn  # after --help: these imports take seconds

    from face_generation.serving.app import create_app
    from face_generation.serving.models import load_served_models
    from face_generation.tracking.server import use_tracking_server

    uri = use_tracking_server(cfg.tracking)
    if any(str(model).startswith(REGISTRY_SCHEMES) for model in cfg.serve.models.values()):
        print(f"[serve] MLflow model URIs resolve against {uri} ({source or 'configs/tracking/'})")
    try:
        models = load_served_models(cfg)
    except (CheckpointError, OSError, ValueError) as error:
        raise SystemExit(f"[serve] error: {error}") from None
    except Exception as error:  # MLflow's own errors: unknown model, version or alias; no server
        raise SystemExit(
            f"[serve] error loading the models: {type(error).__name__}: {error}"
        ) from None
    if not models:
        raise SystemExit(
            f"[serve] error: no model to serve: no {cfg.paths.models}/<name>/model.pt; train "
            "one (`make run`) or name one with +serve.models.NAME=SOURCE"
        )
    app = create_app(models, cfg)
    try:
        listener = listen(str(cfg.serve.host), int(cfg.serve.port), int(cfg.serve.backlog))
    except OSError as error:
        raise SystemExit(
            f"[serve] error: cannot listen on {cfg.serve.host}:{cfg.serve.port}: {error}"
        ) from None
    if not ipaddress.ip_address(listener.getsockname()[0]).is_loopback:
        print(f"[serve] listening on {cfg.serve.host}: reachable from other machines")
    names = ", ".join(f"{model.name} ({model.version})" for model in models.values())
    print(f"[serve] {names} at {url(listener)} (API docs: {url(listener)}docs)", flush=True)
    config = uvicorn.Config(
        app,
        log_level=str(cfg.serve.log_level),
        access_log=bool(cfg.serve.access_log),
        limit_concurrency=int(cfg.serve.max_connections),
    )
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
