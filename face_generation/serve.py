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
import contextlib
import ipaddress
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from face_generation.config import compose, tracking_source
from face_generation.errors import UserError, reported_errors
from face_generation.runtime.checkpoint import CheckpointError
from face_generation.runtime.sources import REGISTRY_SCHEMES

if TYPE_CHECKING:
    from face_generation.serving.models import ServedModel


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
    import uvicorn  # after --help: these imports take seconds

    from face_generation.serving.app import create_app
    from face_generation.serving.guard import server_config

    with reported_errors("serve", CheckpointError, ValueError):
        tracking, source = tracking_source()  # params.yaml's tracking.port, as every command
        # the whole config, checked before any model loads
        cfg = compose("config", [*tracking, *args.overrides])
        models = load_models(cfg, source)
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
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the service, not a traceback
        uvicorn.Server(server_config(app, cfg.serve)).run(sockets=[listener])


def load_models(cfg: DictConfig, source: str | None) -> dict[str, ServedModel]:
    """The models of `cfg.serve`; `models:/` URIs resolve against the server of cfg.tracking
    (from `source`: params.yaml or the environment), which is printed; MLflow's own errors (an
    unknown model, version or alias, no server) become one line."""
    from face_generation.serving.models import load_served_models
    from face_generation.tracking.server import use_registry_server, use_tracking_server

    uri = use_tracking_server(cfg.tracking)
    if any(str(model).startswith(REGISTRY_SCHEMES) for model in cfg.serve.models.values()):
        use_registry_server(cfg.tracking)
        print(f"[serve] MLflow model URIs resolve against {uri} ({source or 'configs/tracking/'})")
    try:
        models = load_served_models(cfg)
    except (CheckpointError, OSError, ValueError):
        raise
    except Exception as error:
        raise UserError(f"loading the models: {type(error).__name__}: {error}") from None
    if not models:
        raise UserError(
            f"no model to serve: no {cfg.paths.models}/<name>/model.pt; train "
            "one (`make run`) or name one with +serve.models.NAME=SOURCE"
        )
    return models


if __name__ == "__main__":
    main()
