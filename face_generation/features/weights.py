"""Finding pretrained weights that may have to be downloaded, without hanging when offline.

Order for every downloadable network: a configured local file (`*.weights_path`), then the
library's own cache, then a download, which is attempted only after the host answered a
TCP connection within a timeout (urllib has none, and the Hugging Face client retries for a
minute), and whose failure becomes a `WeightsUnavailableError` that says what to do.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

import torch


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights that cannot be loaded here; the message names the alternatives."""


def unreachable(url: str, timeout_s: float) -> str | None:
    """None when the host of `url` accepts a TCP connection within `timeout_s`, else why not."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return f"no host in {url!r}"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return None
    except OSError as error:  # DNS failure, refused, timed out, no route
        return f"{parsed.hostname}:{port} is unreachable ({error})"


def torch_hub_checkpoint(url: str) -> Path:
    """Where torch.hub's `load_state_dict_from_url` (and facenet-pytorch) cache `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def local_file(weights_path: str | Path, what: str, config_key: str) -> Path:
    """The configured weights file, or a clear error when it is missing."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{what}: {config_key}={weights_path} is not a file; point it at the downloaded weights"
        )
    return path
