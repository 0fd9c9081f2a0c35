"""CelebA download (face_generation.data.celeba) against a real HTTP server on 127.0.0.1.

The server serves a small zip in CelebA's layout (scikit-image's LFW faces as 178x218 JPEGs)
and CRLF label files, honours Range/If-Range like Google Drive does, logs every request, and
can drop a response part-way to simulate an interrupted download.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from gdown.download import CHUNK_SIZE as GDOWN_CHUNK_BYTES
from omegaconf import DictConfig
from PIL import Image

from face_generation.data.celeba import CelebADownloadError, download_celeba
from tests.faces import lfw_faces

LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"
IMAGE_SIZE = (178, 218)  # CelebA's aligned images, width x height
FACES = 100
ZIP_NAME = "img_align_celeba.zip"
PARTITION_NAME = "list_eval_partition.txt"
IDENTITY_NAME = "identity_CelebA.txt"


def celeba_like_files() -> dict[str, bytes]:
    """A zip of LFW faces in CelebA's layout and its two label files (CRLF, as the originals)."""
    faces = lfw_faces(FACES)
    names = [f"{index + 1:06d}.jpg" for index in range(FACES)]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, face in zip(names, faces, strict=True):
            image = Image.fromarray(face).convert("RGB").resize(IMAGE_SIZE)
            encoded = io.BytesIO()
            image.save(encoded, "JPEG", quality=95)
            zipped.writestr(f"img_align_celeba/{name}", encoded.getvalue())
    partition = "".join(f"{name} {index % 3}\r\n" for index, name in enumerate(names))
    identity = "".join(f"{name} {index // 4 + 1}\r\n" for index, name in enumerate(names))
    return {
        ZIP_NAME: archive.getvalue(),
        PARTITION_NAME: partition.encode(),
        IDENTITY_NAME: identity.encode(),
    }


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class FileServer:
    """What the local server serves and what it was asked."""

    files: dict[str, bytes]  # URL path -> body
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent, once
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == "GET" and r.path == path]


def make_handler(served: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.answer(send_body=False)

        def do_GET(self) -> None:
            self.answer(send_body=True)

        def answer(self, send_body: bool) -> None:
            with served.lock:
                served.requests.append(Request(self.command, self.path, self.headers["Range"]))
                body = served.files.get(self.path)
                drop_after = served.drop_after.pop(self.path, None) if send_body else None
            if body is None:
                self.send_error(404)
                return
            start = 0
            wanted = self.headers["Range"]
            if wanted and self.headers.get("If-Range", LAST_MODIFIED) == LAST_MODIFIED:
                match = re.fullmatch(r"bytes=(\d+)-", wanted)
                assert match is not None, f"unexpected Range header {wanted!r}"
                start = int(match[1])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Last-Modified", LAST_MODIFIED)
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if send_body:
                # HTTP/1.0: the connection closes after the handler, so a short body is a drop.
                self.wfile.write(body[start:][:drop_after])

    return Handler


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    files = celeba_like_files()
    served = FileServer(files={f"/files/{name}-id": body for name, body in files.items()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(served))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{server.server_port}"
    yield served
    server.shutdown()
    server.server_close()
    thread.join()


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def celeba_download(make_config: Callable[..., DictConfig]) -> DictConfig:
    """configs/data/celeba.yaml's download block, as composed for data=celeba."""
    return make_config("data=celeba").data.download


def point_at(download_cfg: DictConfig, served: FileServer, retries: int = 0) -> DictConfig:
    """The download config with ids, sizes and MD5s of the files the local server serves."""
    for name, spec in download_cfg.files.items():
        body = served.files[f"/files/{name}-id"]
        spec.id = f"{name}-id"
        spec.size = len(body)
        spec.md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    download_cfg.url_template = served.url + "/files/{id}"
    download_cfg.timeout = 2
    download_cfg.retries = retries
    return download_cfg


def test_downloads_verifies_and_then_reuses(
    file_server: FileServer, celeba_download: DictConfig, tmp_path: Path
) -> None:
    cfg = point_at(celeba_download, file_server)
    dest = tmp_path / "celeba"

    paths = download_celeba(cfg, dest)

    assert paths == {name: dest / name for name in (ZIP_NAME, PARTITION_NAME, IDENTITY_NAME)}
    for name, path in paths.items():
        assert path.read_bytes() == file_server.files[f"/files/{name}-id"]
        assert len(file_server.gets(f"/files/{name}-id")) == 1
    assert sorted(p.name for p in dest.iterdir()) == sorted(paths)  # no temp files left
    with zipfile.ZipFile(paths[ZIP_NAME]) as archive:
        assert archive.namelist()[0] == "img_align_celeba/000001.jpg"

    requests_before = len(file_server.requests)
    assert download_celeba(cfg, dest) == paths
    assert file_server.requests[requests_before:] == []  # verified locally: no GET, no HEAD


def test_files_placed_by_hand_need_no_network(
    file_server: FileServer, celeba_download: DictConfig, tmp_path: Path
) -> None:
    cfg = point_at(celeba_download, file_server)
    cfg.url_template = f"http://127.0.0.1:{closed_port()}/files/{{id}}"
    for name in cfg.files:
        (tmp_path / name).write_bytes(file_server.files[f"/files/{name}-id"])

    assert download_celeba(cfg, tmp_path) == {name: tmp_path / name for name in cfg.files}


def test_interrupted_download_resumes_with_range_request(
    file_server: FileServer, celeba_download: DictConfig, tmp_path: Path
) -> None:
    cfg = point_at(celeba_download, file_server, retries=0)
    path = f"/files/{ZIP_NAME}-id"
    body = file_server.files[path]
    # gdown writes whole 512 KiB chunks, so drop the connection past the first one.
    assert len(body) > GDOWN_CHUNK_BYTES * 1.2, "test zip too small to interrupt"
    file_server.drop_after[path] = (GDOWN_CHUNK_BYTES + len(body)) // 2

    with pytest.raises(CelebADownloadError, match="rerunning resumes") as interrupted:
        download_celeba(cfg, tmp_path)
    assert "data=folder" in str(interrupted.value)
    assert not (tmp_path / ZIP_NAME).exists()
    parts = list(tmp_path.glob(f"{ZIP_NAME}*.part"))
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < len(body)
    received = parts[0].stat().st_size

    paths = download_celeba(cfg, tmp_path)

    assert paths[ZIP_NAME].read_bytes() == body
    ranges = [r.range for r in file_server.gets(path) if r.range]
    assert ranges == [f"bytes={received}-"]
    assert not list(tmp_path.glob("*.part"))


def test_dropped_connection_is_resumed_within_one_call_when_retries_allow(
    file_server: FileServer, celeba_download: DictConfig, tmp_path: Path
) -> None:
    cfg = point_at(celeba_download, file_server, retries=1)
    path = f"/files/{ZIP_NAME}-id"
    body = file_server.files[path]
    file_server.drop_after[path] = (GDOWN_CHUNK_BYTES + len(body)) // 2

    paths = download_celeba(cfg, tmp_path)

    assert paths[ZIP_NAME].read_bytes() == body
    assert [r.range for r in file_server.gets(path) if r.range] == [f"bytes={GDOWN_CHUNK_BYTES}-"]


def test_wrong_checksum_is_an_error_and_not_kept_under_final_name(
    file_server: FileServer, celeba_download: DictConfig, tmp_path: Path
) -> None:
    cfg = point_at(celeba_download, file_server)
    actual = cfg.files[IDENTITY_NAME].md5
    cfg.files[IDENTITY_NAME].md5 = "0" * 32

    with pytest.raises(CelebADownloadError) as failure:
        download_celeba(cfg, tmp_path)

    message = str(failure.value)
    assert IDENTITY_NAME in message and actual in message and "0" * 32 in message
    assert "delete" in message and "rerun" in message
    assert not (tmp_path / IDENTITY_NAME).exists()
    assert (tmp_path / PARTITION_NAME).exists()  # the files that verified are kept


def test_wrong_size_is_an_error(
    file_server: FileServer, celeba_download: DictConfig, tmp_path: Path
) -> None:
    cfg = point_at(celeba_download, file_server)
    size = cfg.files[ZIP_NAME].size
    cfg.files[ZIP_NAME].size = size + 1

    with pytest.raises(CelebADownloadError, match=rf"size is {size} bytes, expected {size + 1}"):
        download_celeba(cfg, tmp_path)
    assert not (tmp_path / ZIP_NAME).exists()


def test_existing_file_that_differs_is_not_overwritten(
    file_server: FileServer, celeba_download: DictConfig, tmp_path: Path
) -> None:
    cfg = point_at(celeba_download, file_server)
    official = file_server.files[f"/files/{PARTITION_NAME}-id"]
    converted_to_lf = official.replace(b"\r\n", b"\n")
    (tmp_path / PARTITION_NAME).write_bytes(converted_to_lf)

    with pytest.raises(CelebADownloadError, match="CRLF") as failure:
        download_celeba(cfg, tmp_path)
    assert "Delete it and rerun" in str(failure.value)
    assert (tmp_path / PARTITION_NAME).read_bytes() == converted_to_lf


def test_unreachable_host_fails_fast_naming_the_alternative(
    celeba_download: DictConfig, tmp_path: Path
) -> None:
    celeba_download.url_template = f"http://127.0.0.1:{closed_port()}/files/{{id}}"
    celeba_download.timeout = 2

    with pytest.raises(CelebADownloadError) as failure:
        download_celeba(celeba_download, tmp_path)

    message = str(failure.value)
    assert "network is unreachable" in message
    assert "data=folder data.path=" in message
    assert str(tmp_path) in message and "Too many users" in message


def test_silent_host_fails_within_the_timeout(celeba_download: DictConfig, tmp_path: Path) -> None:
    # Accepts connections (the kernel completes the handshake) but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        celeba_download.url_template = f"http://127.0.0.1:{silent.getsockname()[1]}/{{id}}"
        celeba_download.timeout = 1

        with pytest.raises(CelebADownloadError, match="network is unreachable"):
            download_celeba(celeba_download, tmp_path)


def host_answers(url: str, timeout: float) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def test_real_google_drive_url_fails_fast_when_offline(
    celeba_download: DictConfig, tmp_path: Path
) -> None:
    url = celeba_download.url_template.format(id="x")
    if host_answers(url, timeout=3):
        pytest.skip(f"{urlsplit(url).hostname} is reachable: this checks the offline behaviour")

    with pytest.raises(CelebADownloadError) as failure:
        download_celeba(celeba_download, tmp_path)

    message = str(failure.value)
    assert "network is unreachable" in message and "drive.google.com" in message
    assert "data=folder data.path=/path/to/celeba" in message
    assert not any(tmp_path.iterdir())


def test_fetch_of_celeba_with_its_host_down_is_one_line_naming_what_to_do(
    closed_port_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from face_generation.data import fetch

    with pytest.raises(SystemExit) as exited:
        fetch.main(
            [
                "data=celeba",
                f"paths.data={tmp_path}",
                f"data.download.url_template='{closed_port_url}/uc?id={{id}}'",
                "data.download.timeout=2",
            ]
        )
    (line,) = str(exited.value.code).splitlines()
    assert line.startswith("[fetch] error: ") and "data=folder data.path=" in line
    assert not any((tmp_path / "sources" / "celeba").iterdir())
