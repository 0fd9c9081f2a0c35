"""The web service over the session's trained models (not a test module: the serving tests
import from here), and the photos its tests upload."""

from __future__ import annotations

import base64
import io
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from face_generation.config import compose
from face_generation.serving.models import ServedModel, load_served_models
from tests.conftest import TrainedModels

SERVED = ("vae", "dcgan", "tiny")  # a model that reconstructs, a plain one, a conditional one


def serving_config(trained: TrainedModels, *overrides: str) -> DictConfig:
    """configs/ with the session's trained models as serve.models and its packed test faces."""
    cfg = compose(
        "config",
        [f"paths.data={trained.data}", "serve.device=cpu", "serve.log_level=warning", *overrides],
    )
    cfg.serve.models = {name: str(trained.checkpoints[name]) for name in SERVED}
    return cfg


def load_models(trained: TrainedModels) -> dict[str, ServedModel]:
    return load_served_models(serving_config(trained))


def with_limits(cfg: DictConfig, **limits: Any) -> DictConfig:
    merged = OmegaConf.merge(cfg, {"serve": {"limits": limits}})
    assert isinstance(merged, DictConfig)
    return merged


def encoded(pixels: np.ndarray, image_format: str = "PNG", **save: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **save)
    return buffer.getvalue()


def decoded(base64_png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(base64_png))))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height pixels: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@contextmanager
def live_server(app: Any, serve: DictConfig) -> Iterator[str]:
    """The app served by uvicorn on 127.0.0.1 in a thread, with the settings `serve` gives the
    real service (serving/guard.py); yields its URL.

    The socket listens before the thread starts, so a request made at once waits in the
    backlog instead of being refused: nothing has to poll for the server to come up.
    """
    import uvicorn

    from face_generation.serving.guard import server_config

    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app, serve))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()
