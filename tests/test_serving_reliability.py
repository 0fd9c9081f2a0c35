"""The web service under clients that misbehave: idle sockets, slow heads and bodies, more
requests than the cap, oversized JSON. A real uvicorn server on 127.0.0.1 with the settings
the service runs with; the sockets are raw, so each client does exactly what it says."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from face_generation.serving.app import create_app
from face_generation.serving.models import ServedModel
from tests.conftest import TrainedModels
from tests.serving_fixtures import live_server, serving_config

WAIT_S = 30  # a socket read that gets nothing for this long fails the test instead of hanging


@pytest.fixture(scope="module")
def models(trained: TrainedModels) -> dict[str, ServedModel]:
    from tests.serving_fixtures import load_models

    return load_models(trained)


@contextmanager
def service(
    trained: TrainedModels, models: dict[str, ServedModel], *settings: str
) -> Iterator[str]:
    cfg = serving_config(trained, *settings)
    with live_server(create_app(models, cfg), cfg.serve) as url:
        yield url


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)), timeout=WAIT_S)
    return client


def read_all(client: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def slow_body_request(url: str, path: str = "/generate") -> socket.socket:
    """A POST whose head is in the app (the server asked for the body: 100 Continue) and whose
    body never comes."""
    client = connect(url)
    client.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    assert client.recv(1024).startswith(b"HTTP/1.1 100 Continue")
    return client


GENERATE = {"model": "dcgan", "n": 1, "seed": 0}


def test_idle_sockets_do_not_deny_service(
    trained: TrainedModels, models: dict[str, ServedModel]
) -> None:
    with service(trained, models, "serve.max_requests=4") as url, ExitStack() as idle:
        for _ in range(12):  # three times the request cap, connected and silent
            idle.enter_context(connect(url))
        with httpx.Client(base_url=url, timeout=WAIT_S) as client:
            assert client.get("/health").status_code == 200
            assert client.post("/generate", json=GENERATE).status_code == 200


@pytest.mark.parametrize("sent", [b"", b"GET /health HTTP/1.1\r\nHost: x\r\n"])
def test_a_connection_without_a_whole_request_head_is_closed(
    trained: TrainedModels, models: dict[str, ServedModel], sent: bytes
) -> None:
    with service(trained, models, "serve.head_timeout_s=0.2") as url, connect(url) as client:
        client.sendall(sent)
        assert read_all(client).startswith(b"HTTP/1.1 408 ")  # then closed


def test_a_slow_body_is_refused_and_health_answers_meanwhile(
    trained: TrainedModels, models: dict[str, ServedModel]
) -> None:
    with service(trained, models, "serve.body_timeout_s=0.5") as url:
        with slow_body_request(url) as slow, httpx.Client(base_url=url, timeout=WAIT_S) as client:
            assert client.get("/health").status_code == 200
            answer = read_all(slow)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert json.loads(body) == {"detail": "the request body did not arrive within 0.5 s"}


def test_requests_over_the_cap_are_refused_at_once_and_health_is_not_queued(
    trained: TrainedModels, models: dict[str, ServedModel]
) -> None:
    with service(trained, models, "serve.max_requests=2") as url, ExitStack() as held:
        for _ in range(2):
            held.enter_context(slow_body_request(url))  # two requests in progress
        with httpx.Client(base_url=url, timeout=WAIT_S) as client:
            busy = client.post("/generate", json=GENERATE)
            assert busy.status_code == 503
            assert busy.json()["detail"] == "busy: 2 requests in progress; retry in a moment"
            assert busy.headers["retry-after"] == "1"
            assert client.get("/health").status_code == 200
        held.close()  # the two give up: the cap frees
        with httpx.Client(base_url=url, timeout=WAIT_S) as client:
            assert client.post("/generate", json=GENERATE).status_code == 200


def test_a_large_json_body_is_refused_before_it_is_parsed(
    trained: TrainedModels, models: dict[str, ServedModel]
) -> None:
    large = json.dumps({**GENERATE, "padding": "x" * 100_000}).encode()
    limit = "the JSON request is larger than the limit of 64 kB"
    with service(trained, models) as url, httpx.Client(base_url=url, timeout=WAIT_S) as client:
        headers = {"Content-Type": "application/json"}
        declared = client.post("/generate", content=large, headers=headers)
        assert (declared.status_code, declared.json()["detail"]) == (413, limit)

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
            yield from (large[i : i + 8192] for i in range(0, len(large), 8192))

        streamed = client.post("/generate", content=chunks(), headers=headers)
        assert (streamed.status_code, streamed.json()["detail"]) == (413, limit)
        assert client.post("/generate", json=GENERATE).status_code == 200
