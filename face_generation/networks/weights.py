"""Finding pretrained weights that may have to be downloaded, without hanging when offline.

Order for every downloadable network: a configured local file (`*.weights_path`), then the
library's own cache, then a download, which is attempted only after the host answered a
TCP connection within a timeout (urllib has none, and the Hugging Face client retries for a
minute), and whose failure becomes a `WeightsUnavailableError` that says what to do.

Each network module words that advice itself (`Advice`: the reason in, the whole message
out), naming the config switch that avoids the network and its `weights_path` option.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch

Advice = Callable[[str], str]  # why the weights cannot be had -> the message that says what to do


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
    """Where torch.hub's `load_state_dict_from_url` caches `url` (under $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def local_file(weights_path: str | Path, advice: Advice) -> Path:
    """The configured weights file, or a `WeightsUnavailableError` when it is missing."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(advice(f"weights_path={weights_path} is not a file"))
    return path


def torch_hub_weights(
    url: str, weights_path: str | Path | None, advice: Advice, timeout_s: float
) -> Path:
    """`weights_path` when set, else torch.hub's cached copy of `url`, else that copy downloaded."""
    if weights_path:
        return local_file(weights_path, advice)
    cached = torch_hub_checkpoint(url)
    if cached.is_file():
        return cached
    why = unreachable(url, timeout_s)
    if why:
        raise WeightsUnavailableError(advice(f"not cached at {cached} and {why}"))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except Exception as error:  # the host answered the probe, then the download failed
        raise WeightsUnavailableError(advice(f"downloading {url} failed: {error}")) from error
    return cached
